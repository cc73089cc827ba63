"""What one Tune trial of a sweep runs: find or create its nested MLflow child run, then
train in-process (one worker, the one loop via pipelines.training's pieces) or launch a
Ray Train TorchTrainer (N workers, pipelines.distributed) and forward its reports to Tune.

A trial's MLflow run is found by its Tune trial id, so a trial restarted by a resumed
sweep continues its own child run from its last MLflow checkpoint instead of starting
a duplicate. How a trial ends is written on its run:

    FINISHED  ran its whole budget; has its best and final generator models
    KILLED    stopped early by Tune, tag stopped_reason = "tune: ..." (ASHA pruned it, or
              the sweep was stopped); metrics, grids and its best model so far kept. If
              its process dies before it closes the run, the driver does (closing.py)
    FAILED    diverged (tag stopped_reason = "health: ...", the loop's health guard) or
              crashed (tag error); what it logged is kept, promote never picks it
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gan.callbacks import Callbacks, ForwardingCallbacks
from gan.config import RunConfig, make_config
from gan.data import ImageData
from gan.train import resolve_device
from pipelines.sweep.naming import TUNE_NAME_KEY, trial_name
from pipelines.sweep.tune_stop import TuneStopWatch, tune_stopped
from pipelines.tracking import names
from pipelines.tracking.resources import log_resources
from pipelines.tracking.runs import TrackedRun
from pipelines.tracking.store import client_for, environment_tags
from pipelines.training.in_process import fit_here
from pipelines.training.prepare import build_evaluator


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one sweep shares (small and picklable; the data goes separately)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    workers_per_trial: int = 1
    storage_path: str = "./ray_results"
    searched: tuple[str, ...] = ()  # the space's parameter names (a trial samples the active ones)
    rungs: tuple[int, ...] = ()  # epochs where ASHA compares trials: always scored


class TuneCallbacks(ForwardingCallbacks):
    """MLflow first, then each eval's scores to Tune (ASHA and Optuna read `fid`).

    The last epoch's scores are reported after the run is finished (see run_trial): a
    report is where Tune stops a trial, and a trial that has trained its whole budget
    must keep its checkpoint and model even when ASHA ranks it low at that rung."""

    def __init__(self, inner: Callbacks, last_epoch: int, rungs: tuple[int, ...] = (),
                 first_step: list[float] | None = None, name: str = "") -> None:
        super().__init__(inner)
        self.name = name  # the run's name, sent with each report for the driver's progress lines
        self.last_epoch, self.rungs = last_epoch, set(rungs)
        self.epoch = 0
        self.last: dict[str, float] = {}
        self.first_step = first_step if first_step is not None else []  # when the first step's losses came

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        if rows and not self.first_step:
            self.first_step.append(time.time())
        self.inner.on_metrics(rows)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.inner.on_eval(epoch, step, grid, metrics)
        self.epoch = epoch
        self.last = {names.FID: math.nan, **{k: float(v) for k, v in metrics.items()},
                     names.EPOCH: epoch, "step": step}
        if epoch < self.last_epoch:
            # Tune ends a pruned trial by raising SystemExit out of report(): see run_trial.
            report(self.last, self.name)


    def wants_eval(self, epoch: int) -> bool:
        return epoch in self.rungs or self.inner.wants_eval(epoch)

    def wrapping(self, inner: Callbacks) -> TuneCallbacks:
        """This hand-off around the run's own callbacks (fit_here builds those)."""
        self.inner = inner
        return self


def pruned_reason(epoch: int) -> str:
    return f"tune: stopped by the scheduler after epoch {epoch} (its FID was not competitive)"


def report(metrics: dict[str, float], name: str = "") -> None:
    """Scores to Tune; with the trial's MLflow run name, which the driver's progress lines
    print (tuning.shown_name), so the console and the runs table name a trial alike."""
    from ray import tune

    tune.report({**metrics, TUNE_NAME_KEY: name} if name else metrics)


def find_child(client: Any, ctx: TrialContext, trial_id: str) -> Any | None:
    """The child run of this sweep already made for `trial_id` (after a resume), if any."""
    runs = client.search_runs(
        [ctx.experiment_id],
        f"tags.`{names.PARENT_RUN}` = '{ctx.parent_run_id}' and tags.`{names.TRIAL_ID}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0] if runs else None


def open_child(client: Any, ctx: TrialContext, trial_id: str, cfg: RunConfig,
               device: str, sampled: dict[str, Any]) -> tuple[str, bool]:
    """(run id, fresh): this trial's existing child run reopened, else a new nested one,
    named by its number and `sampled` values."""
    run = find_child(client, ctx, trial_id)
    node = _node_tag()  # where it runs now: a trial restarted after its node died moves
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        for key, value in node.items():
            client.set_tag(run.info.run_id, key, value)
        return run.info.run_id, False
    tags = {**environment_tags(cfg.dataset, device), names.PARENT_RUN: ctx.parent_run_id,
            names.TRIAL_ID: trial_id, names.SWEEP_NAME: ctx.sweep_name, **node}
    run = client.create_run(ctx.experiment_id, run_name=trial_name(0, sampled), tags=tags)
    # Its number is its place among the sweep's trials in start order (the order the report
    # keeps), counted once it exists: two trials that start at once do not share a number.
    siblings = client.search_runs([ctx.experiment_id], f"tags.`{names.PARENT_RUN}` = '{ctx.parent_run_id}'",
                                  max_results=10_000)
    order = sorted((r.info.start_time, r.info.run_id) for r in siblings)
    number = order.index((run.info.start_time, run.info.run_id)) + 1
    client.update_run(run.info.run_id, name=trial_name(number, sampled))
    return run.info.run_id, True


def _node_tag() -> dict[str, str]:
    """The Ray node this trial runs on, as a tag (placement is visible on each run)."""
    import ray

    return {names.NODE_ID: ray.get_runtime_context().get_node_id()} if ray.is_initialized() else {}


_EVALUATORS: dict[tuple, Any] = {}


def cached_evaluator(cfg: RunConfig, data: ImageData, device: torch.device) -> Any:
    """One evaluator per process and setting: a reused actor's next trial skips loading
    the backbone and the real statistics (part of the per-trial start-up)."""
    key = (cfg.backbone, cfg.eval_samples, cfg.seed, str(device), data.fingerprint())
    if key not in _EVALUATORS:
        _EVALUATORS.clear()  # one at a time: the backbone may be an Inception network
        _EVALUATORS[key] = build_evaluator(cfg, data, device)
    return _EVALUATORS[key]


# When Tune reuses this actor for the next trial, Ray's FunctionTrainable.reset_config waits
# TUNE_FUNCTION_THREAD_TIMEOUT_S (default 2 s) for this trial's thread to end. A pruned trial
# is still closing its run then (losses, lease, GIF, KILLED); if the wait runs out, Ray errors
# the *next* trial before its function runs: no run, no retry, and its concurrency slot is
# never given back (a 40-trial sweep recorded 39 runs). Ray reads it in this process at each
# reuse, so a trial sets it for its own actor, on a local Ray and on a cluster alike.
REUSE_WAIT_ENV, REUSE_WAIT_S = "TUNE_FUNCTION_THREAD_TIMEOUT_S", 300


def run_trial(config: dict[str, Any], data: ImageData, ctx: TrialContext) -> None:
    """The Tune function trainable of a sweep (bound with tune.with_parameters)."""
    from ray import tune

    os.environ[REUSE_WAIT_ENV] = str(REUSE_WAIT_S)
    started = time.time()
    trial_id = tune.get_context().get_trial_id()
    cfg = make_config(config)
    # Only the parameters this trial sampled are its params (no mlp_width on a dcgan
    # trial); its name shows them too (the report shortens it to those that differ).
    inactive = tuple(k for k in ctx.searched if k not in config)
    sampled = {k: config[k] for k in ctx.searched if k in config}
    if ctx.gpus_per_trial > 0 and cfg.device in ("auto", "cpu"):
        cfg = dataclasses.replace(cfg, device="cuda")
    if ctx.workers_per_trial > 1:
        return _run_distributed_trial(cfg, data, ctx, trial_id, sampled, inactive)
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    device = resolve_device(cfg.device)
    client = client_for(ctx.tracking_uri)
    run_id, fresh = open_child(client, ctx, trial_id, cfg, str(device), sampled)
    name = client.get_run(run_id).info.run_name
    first_step: list[float] = []

    def resources() -> None:
        log_resources(client, run_id, started, ctx.cpus_per_trial, ctx.gpus_per_trial)
        if first_step:
            client.set_tag(run_id, names.TRIAL_SECONDS_TO_FIRST_STEP, f"{first_step[0] - started:.2f}")

    # The lease keeps `train --resume` off a trial that is training; taken without a check:
    # Tune restarting this trial after its node died must not wait out the dead lease.
    with TrackedRun(client, run_id, fresh=fresh, prunable=True, before_close=resources) as run:
        run.start(cfg, {"world_size": 1, "device_type": str(device), "num_workers": 1,
                        names.TRIAL_ID: trial_id}, data, omit=inactive)
        restored = run.restore()  # a resumed sweep restarted this trial: continue its run
        if restored.state is not None:
            cfg = make_config(restored.state["config"])
            client.set_tag(run_id, names.TRIAL_RESUMED_FROM_STEP, str(restored.state["step"]))
        to_tune = TuneCallbacks(Callbacks(), cfg.epochs, ctx.rungs, first_step, name)
        run.pruned_reason = lambda: pruned_reason(to_tune.epoch)  # Tune stops it in report()
        result = fit_here(run, cfg, data, restored, cached_evaluator(cfg, data, device), wrap=to_tune.wrapping)
        if run.close(result, cfg, data.shape) is None:  # diverged: FAILED, no model; the sweep goes on
            report({names.FID: math.nan, names.BEST_FID: to_tune.last.get(names.BEST_FID, math.nan),
                    names.EPOCH: result.epochs_done, "step": result.step, "stopped": 1}, name)
            return None
        final = to_tune.last or _logged_scores(client, run_id)  # resumed after its last epoch: logged
        report({**final, names.EPOCH: result.epochs_done, "step": result.step}, name)
    return None


def _logged_scores(client: Any, run_id: str) -> dict[str, float]:
    metrics = client.get_run(run_id).data.metrics
    return {names.FID: math.nan, **{k: v for k, v in metrics.items() if k in (names.FID, names.BEST_FID, names.KID)}}


def _run_distributed_trial(cfg: RunConfig, data: ImageData, ctx: TrialContext,
                           trial_id: str, sampled: dict[str, Any], inactive: tuple[str, ...]) -> None:
    """N Ray Train workers for this trial (Train V2 inside Tune): trainer.fit() here, the
    workers' reports forwarded to Tune by TuneReportCallback. The same lifecycle as every
    run: this trial's process owns the run, its rank 0 writes into it."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.distributed.options import RayOptions, run_params, worker_config
    from pipelines.distributed.trainer import fit_run

    opts = RayOptions(workers=ctx.workers_per_trial, gpu=ctx.gpus_per_trial > 0,
                      cpus_per_worker=max(1, int(ctx.cpus_per_trial)), storage_path=ctx.storage_path)
    # Ray Train reports at checkpoints: checkpointing at every eval puts `fid` in each report.
    # Its Ray Train workers report to Tune at each eval: no eval budget, every eval_every epoch scores.
    cfg = worker_config(dataclasses.replace(cfg, checkpoint_every=cfg.eval_every, eval_budget=0.0), opts)
    client = client_for(ctx.tracking_uri)
    run_id, fresh = open_child(client, ctx, trial_id, cfg, f"{opts.workers}x{'cuda' if opts.gpu else 'cpu'}", sampled)
    started = time.time()

    def resources() -> None:
        log_resources(client, run_id, started, ctx.cpus_per_trial * opts.workers, ctx.gpus_per_trial * opts.workers)

    def last_epoch() -> int:
        return int(client.get_run(run_id).data.metrics.get(names.EPOCH, 0))

    with TrackedRun(client, run_id, fresh=fresh, prunable=True, before_close=resources) as run:
        run.start(cfg, {**run_params(opts), names.TRIAL_ID: trial_id}, data, omit=inactive)
        run.restore(checkpoint=False)  # Ray Train restores its own checkpoint (same name, same storage)
        with TuneStopWatch(client, run_id, lambda: pruned_reason(last_epoch())) as tune_stop:
            # the epoch Tune judged it at, not the one its workers stopped after
            run.pruned_reason = lambda: tune_stop.why or pruned_reason(last_epoch())
            try:  # rank 0 samples the run's system metrics (distributed.worker)
                result = fit_run(run.handle(ctx.tracking_uri), cfg, opts, data.shape,
                                 callbacks=[TuneReportCallback()])
            except Exception:
                if tune_stop.stopped or tune_stopped():  # Tune ended this trial's actor, and its Train run
                    raise SystemExit(0) from None
                raise
        if tune_stop.stopped:  # the workers stopped at an epoch's end, as Tune asked: pruned
            raise SystemExit(0)
        if run.close(result, cfg, data.shape) is None:
            report({names.FID: math.nan, names.EPOCH: cfg.epochs, "stopped": 1})
