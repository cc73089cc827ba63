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
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gan.callbacks import Callbacks, ForwardingCallbacks
from gan.config import RunConfig, make_config
from gan.data import ImageData
from gan.train import resolve_device, train
from pipelines.sweep.naming import trial_name
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks, send_offline_writes
from pipelines.tracking.history import last_eval_step, last_logged_step, latest_checkpoint, logged_grids
from pipelines.tracking.inputs import log_dataset
from pipelines.tracking.lease import lease
from pipelines.tracking.resources import log_eval_share, log_resources, system_metrics
from pipelines.tracking.runs import diverged_reason, end_early, fail_diverged, finish_run, log_run_config, run_guard
from pipelines.tracking.store import client_for, environment_tags
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

    def __init__(self, inner: Callbacks, last_epoch: int, rungs: tuple[int, ...] = ()) -> None:
        super().__init__(inner)
        self.last_epoch, self.rungs = last_epoch, set(rungs)
        self.epoch = 0
        self.last: dict[str, float] = {}
        self.first_step_at: float | None = None

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        if rows and self.first_step_at is None:
            self.first_step_at = time.time()
        self.inner.on_metrics(rows)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.inner.on_eval(epoch, step, grid, metrics)
        self.epoch = epoch
        self.last = {names.FID: math.nan, **{k: float(v) for k, v in metrics.items()},
                     names.EPOCH: epoch, "step": step}
        if epoch < self.last_epoch:
            # Tune ends a pruned trial by raising SystemExit out of report(): see run_trial.
            report(self.last)


    def wants_eval(self, epoch: int) -> bool:
        return epoch in self.rungs or self.inner.wants_eval(epoch)


def pruned_reason(epoch: int) -> str:
    return f"tune: stopped by the scheduler after epoch {epoch} (its FID was not competitive)"


# Test hook: GAN_PIPELINES_DIE_WHEN_PRUNED=1 makes a trial's process kill -9 itself as Tune
# stops it, before it closes its run: what a driver killed at that moment leaves behind.
DIE_WHEN_PRUNED_ENV = "GAN_PIPELINES_DIE_WHEN_PRUNED"


def _die_if_asked() -> None:
    if os.environ.get(DIE_WHEN_PRUNED_ENV):
        os.kill(os.getpid(), signal.SIGKILL)


def report(metrics: dict[str, float]) -> None:
    from ray import tune

    tune.report(metrics)


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
    started = client.search_runs([ctx.experiment_id], f"tags.`{names.PARENT_RUN}` = '{ctx.parent_run_id}'",
                                 max_results=10_000)
    run = client.create_run(ctx.experiment_id, run_name=trial_name(len(started) + 1, sampled), tags=tags)
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


def run_trial(config: dict[str, Any], data: ImageData, ctx: TrialContext) -> None:
    """The Tune function trainable of a sweep (bound with tune.with_parameters)."""
    from ray import tune

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
    state, floor, eval_floor, frames = None, 0, 0, []
    if not fresh:  # a resumed sweep restarted this trial: continue its run, no duplicate
        send_offline_writes(client, run_id)  # what it trained here while the server was away
        with tempfile.TemporaryDirectory() as tmp:
            state = latest_checkpoint(client, run_id, tmp)
            frames = logged_grids(client, run_id, tmp) if state else []
        floor = last_logged_step(client, run_id)  # steps the run holds are not written twice
        eval_floor = last_eval_step(client, run_id)  # an eval a kill interrupted is redone
        if state is not None:
            cfg = make_config(state["config"])
            client.set_tag(run_id, names.TRIAL_RESUMED_FROM_STEP, str(state["step"]))
    tracking = MlflowCallbacks(client, run_id, floor=floor, eval_floor=eval_floor, frames=frames, cfg=cfg,
                               image_shape=data.shape)
    to_tune = TuneCallbacks(tracking, cfg.epochs, ctx.rungs)
    pruned = False
    with run_guard(client, run_id):
        if fresh or state is None:
            log_run_config(client, run_id, cfg, {"world_size": 1, "device_type": str(device),
                                                 "num_workers": 1, names.TRIAL_ID: trial_id}, omit=inactive)
            log_dataset(client, run_id, cfg.dataset, data)
        try:
            # The lease keeps `train --resume` off a trial that is training. Not checked here:
            # Tune restarting this trial after its node died must not wait out the dead lease.
            with system_metrics(run_id, ctx.tracking_uri, resumed=not fresh), lease(client, run_id):
                result = train(cfg, data, to_tune, evaluator=cached_evaluator(cfg, data, device),
                               resume=state, device=device, progress=False)
                tracking.settle()  # all sent, or (server away) a bounded wait, then TrackingLost
                log_eval_share(client, run_id, result.seconds)
        except SystemExit:  # Tune stopped this trial (ASHA pruned it, or the sweep ended)
            tracking.flush()  # its last losses land before the run closes
            _die_if_asked()
            pruned = True
        log_resources(client, run_id, started, ctx.cpus_per_trial, ctx.gpus_per_trial)
        if to_tune.first_step_at is not None:
            client.set_tag(run_id, names.TRIAL_SECONDS_TO_FIRST_STEP,
                           f"{to_tune.first_step_at - started:.2f}")
    if pruned:
        # Quick: a reused actor waits only ~2 s for this thread before it gives up on it.
        end_early(client, run_id, tracking.frames, pruned_reason(to_tune.epoch))
        raise SystemExit(0)
    if result.diverged:  # the health guard stopped it: FAILED, no final model; the sweep goes on
        assert result.stopped is not None
        fail_diverged(client, run_id, tracking.frames, result.stopped)
        report({names.FID: math.nan, names.BEST_FID: to_tune.last.get(names.BEST_FID, math.nan),
                names.EPOCH: result.epochs_done, "step": result.step, "stopped": 1})
        return None
    with run_guard(client, run_id):
        finish_run(client, run_id, cfg, result.generator, tracking.frames, data.shape,
                   epoch=result.epochs_done, step=result.step)
    final = to_tune.last or _logged_scores(client, run_id)  # resumed after its last epoch: logged
    report({**final, names.EPOCH: result.epochs_done, "step": result.step})
    return None


def _logged_scores(client: Any, run_id: str) -> dict[str, float]:
    metrics = client.get_run(run_id).data.metrics
    return {names.FID: math.nan, **{k: v for k, v in metrics.items() if k in (names.FID, names.BEST_FID, names.KID)}}


def _run_distributed_trial(cfg: RunConfig, data: ImageData, ctx: TrialContext,
                           trial_id: str, sampled: dict[str, Any], inactive: tuple[str, ...]) -> None:
    """N Ray Train workers for this trial (Train V2 inside Tune): trainer.fit() here, the
    workers' reports forwarded to Tune by TuneReportCallback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from gan.checkpoint import load_checkpoint
    from pipelines.distributed.options import RayOptions, run_params, worker_config
    from pipelines.distributed.trainer import final_generator, make_trainer
    from pipelines.distributed.worker import checkpoint_file

    opts = RayOptions(workers=ctx.workers_per_trial, gpu=ctx.gpus_per_trial > 0,
                      cpus_per_worker=max(1, int(ctx.cpus_per_trial)), storage_path=ctx.storage_path)
    # Ray Train reports at checkpoints: checkpointing at every eval puts `fid` in each report.
    # Its Ray Train workers report to Tune at each eval: no eval budget, every eval_every epoch scores.
    cfg = worker_config(dataclasses.replace(cfg, checkpoint_every=cfg.eval_every, eval_budget=0.0), opts)
    client = client_for(ctx.tracking_uri)
    run_id, fresh = open_child(client, ctx, trial_id, cfg, f"{opts.workers}x{'cuda' if opts.gpu else 'cpu'}", sampled)
    started = time.time()
    with run_guard(client, run_id):
        if fresh:
            log_run_config(client, run_id, cfg, {**run_params(opts), names.TRIAL_ID: trial_id}, omit=inactive)
            log_dataset(client, run_id, cfg.dataset, data)
        loop_config = {"cfg": cfg.to_dict(), "tracking_uri": ctx.tracking_uri, "run_id": run_id,
                       "threads": opts.cpus_per_worker, "fail_once": None}
        trainer = make_trainer(opts, loop_config, f"gan-{run_id}")
        # make_trainer builds the Train RunConfig; the Tune hand-off is this sweep's business.
        callbacks: list[Any] = [*(trainer.run_config.callbacks or []), TuneReportCallback()]
        trainer.run_config.callbacks = callbacks
        result = trainer.fit()  # rank 0 samples the run's system metrics (distributed.worker)
        log_resources(client, run_id, started, ctx.cpus_per_trial * opts.workers,
                      ctx.gpus_per_trial * opts.workers)
        with tempfile.TemporaryDirectory() as tmp:
            frames = logged_grids(client, run_id, tmp)
        reason = diverged_reason(client, run_id)  # rank 0 wrote it when the guard stopped the loop
        if reason:
            fail_diverged(client, run_id, frames, reason)
            report({names.FID: math.nan, names.EPOCH: cfg.epochs, "stopped": 1})
            return
        if result.checkpoint is None:
            raise RuntimeError("the trial's workers finished without reporting a checkpoint")
        with result.checkpoint.as_directory() as folder:
            state = load_checkpoint(checkpoint_file(folder))
        generator = final_generator(cfg, data.shape, state)
        finish_run(client, run_id, cfg, generator, frames, data.shape,
                   epoch=int(state["epoch"]), step=int(state["step"]))
