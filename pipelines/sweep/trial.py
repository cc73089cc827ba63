"""What one Tune trial of a sweep runs: find or create its nested MLflow child run, then
the run's one lifecycle (tracking.runs.TrackedRun.train_and_close) with its loop in this process
(one worker, training.in_process) or on a Ray Train TorchTrainer (N workers,
distributed.trainer), its scores forwarded to Tune.

A trial's MLflow run is found by its Tune trial id, so a trial restarted by a resumed
sweep continues its own child run from its last MLflow checkpoint instead of starting
a duplicate. How a trial ends is written on its run:

    FINISHED  ran its whole budget; has its best and final generator models
    KILLED    stopped early by Tune, tag stopped_reason = "tune: ..." (ASHA pruned it, or
              the sweep was stopped), or "driver: ..." for a population member (PBT never
              stops one: the sweep's driver did); metrics, grids and its best model so far
              kept. If its process dies before it closes the run, the driver does (closing.py)
    FAILED    diverged (tag stopped_reason = "health: ...", the loop's health guard) or
              crashed (tag error); what it logged is kept, promote never picks it

A population member (`--scheduler pbt|pb2`) runs this function once per life: PBT pauses
it at each perturbation epoch (its run stays RUNNING) and starts it again from its own
checkpoint or from a better member's (member.py: the exploit recorded on its run). On
Ray Train workers each life is one Ray Train run, stopped at the next perturbation epoch
(member.PausingLoop).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gan.config import make_config
from gan.data import Dataset
from pipelines.compat import ray_api
from pipelines.sweep.naming import trial_name
from pipelines.sweep.report import child_runs
from pipelines.sweep.tune_report import TuneCallbacks, member_stopped_reason, pruned_reason, train_to_tune
from pipelines.sweep.tune_stop import TuneStoppableLoop, forget_handed, handed_to_tune
from pipelines.tracking import names
from pipelines.tracking.resources import log_resources
from pipelines.tracking.runs import Loop, TrackedRun
from pipelines.tracking.store import client_for, environment_tags
from pipelines.training.in_process import InProcessLoop

if TYPE_CHECKING:
    pass


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
    # a population sweep's perturbation epochs (population.py): scored, checkpointed to Tune
    perturb: tuple[int, ...] = ()
    dataset: str = "mnist-5k"  # one for the whole sweep (driver.DATA_KEYS are never searched)

    @property
    def device_label(self) -> str:
        """What a trial trains on, as the run's device tag (a GPU per worker when it has one)."""
        kind = "cuda" if self.gpus_per_trial > 0 else "cpu"
        return kind if self.workers_per_trial == 1 else f"{self.workers_per_trial}x{kind}"


def find_child(client: Any, ctx: TrialContext, trial_id: str) -> Any | None:
    """The child run of this sweep already made for `trial_id` (after a resume), if any."""
    runs = client.search_runs(
        [ctx.experiment_id],
        f"tags.`{names.PARENT_RUN}` = '{ctx.parent_run_id}' and tags.`{names.TRIAL_ID}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0] if runs else None


def open_child(client: Any, ctx: TrialContext, trial_id: str, sampled: dict[str, Any],
               tags: dict[str, str] | None = None, run_name: str | None = None) -> tuple[str, bool]:
    """(run id, fresh): this trial's existing child run reopened, else a new nested one with
    `tags`, named `run_name` or by its number and `sampled` values."""
    run = find_child(client, ctx, trial_id)
    node = _node_tag()  # where it runs now: a trial restarted after its node died moves
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        for key, value in node.items():
            client.set_tag(run.info.run_id, key, value)
        return run.info.run_id, False
    run_tags = {**environment_tags(ctx.dataset, ctx.device_label), names.PARENT_RUN: ctx.parent_run_id,
                names.TRIAL_ID: trial_id, names.SWEEP_NAME: ctx.sweep_name, **node, **(tags or {})}
    run = client.create_run(ctx.experiment_id, run_name=run_name or trial_name(0, sampled), tags=run_tags)
    if run_name:  # named by its caller (a confirming run: its trial's name and seed)
        return run.info.run_id, True
    # Its number is its place among the sweep's trials in start order (the order the report
    # keeps), counted once it exists: two trials that start at once do not share a number.
    siblings = child_runs(client, ctx.experiment_id, ctx.parent_run_id)
    order = sorted((r.info.start_time, r.info.run_id) for r in siblings)
    number = order.index((run.info.start_time, run.info.run_id)) + 1
    client.update_run(run.info.run_id, name=trial_name(number, sampled))
    return run.info.run_id, True


def _node_tag() -> dict[str, str]:
    """The Ray node this trial runs on, as a tag (placement is visible on each run)."""
    import ray

    return {names.NODE_ID: ray.get_runtime_context().get_node_id()} if ray.is_initialized() else {}


# When Tune reuses this actor for the next trial, Ray's FunctionTrainable.reset_config waits
# TUNE_FUNCTION_THREAD_TIMEOUT_S (default 2 s) for this trial's thread to end. A pruned trial
# is still closing its run then (losses, lease, GIF, KILLED); if the wait runs out, Ray errors
# the *next* trial before its function runs: no run, no retry, and its concurrency slot is
# never given back (a 40-trial sweep recorded 39 runs). Ray reads it in this process at each
# reuse, so a trial sets it for its own actor, on a local Ray and on a cluster alike.
REUSE_WAIT_ENV, REUSE_WAIT_S = "TUNE_FUNCTION_THREAD_TIMEOUT_S", 300


# Ray logs every checkpoint a trial reports and every restore at INFO, to the driver's
# console: a population sweep (members checkpoint and restart at each perturbation epoch)
# would print two lines per member per perturbation. Set where trials run: this module is
# imported by the trial process before Tune restores its checkpoint.
ray_api.quiet_storage_loggers(logging.WARNING)

# Set while no trial function runs in this process (or the one that ran has closed its run).
_closed = threading.Event()
_closed.set()


class ClosesItsRun:
    """Mixin of a sweep's function trainable (compat.ray_api.with_mixins): its actor's stop
    waits for the run's close, and each result handed to Tune is noted (train()).

    Tune stops an actor it will not reuse (the sweep's last trials, a trial with no next
    one to hand its actor to) with cleanup(), which tells the trial's thread to stop but
    does not wait for it; the actor process then exits. A trial pruned at that moment is
    still closing its run (last losses, cost figures, GIF, KILLED): cut off, its run stayed
    RUNNING until the driver closed it for it, after waiting 15 s at the end of every
    sweep. This waits, after Ray's cleanup has stopped the thread, for the run to close.
    At the sweep's end Tune kills an actor still stopping after 10 s: a close slower than
    that (its tracking server away) is finished by the driver (closing.py), as before."""

    def cleanup(self) -> None:
        super().cleanup()  # type: ignore[misc]
        _closed.wait(REUSE_WAIT_S)

    def train(self) -> dict[str, Any]:
        """Each result Tune gets, noted: a distributed trial Tune stops names the epoch Tune
        judged it at (tune_stop.handed_to_tune), not a later one its workers reached."""
        result = super().train()  # type: ignore[misc]
        handed_to_tune(result)
        return result


def run_trial(config: dict[str, Any], data: Dataset, ctx: TrialContext,
              tags: dict[str, str] | None = None, run_name: str | None = None) -> None:
    """The Tune function trainable of a sweep (bound with tune.with_parameters, with
    ClosesItsRun mixed in): the sweep's part (its child run, Tune's reports, where it
    trains), then the run's whole lifecycle in one call (TrackedRun.train_and_close), as
    every mode does. `tags` and `run_name`: a new child run's own (sweep.confirm's runs)."""
    _closed.clear()
    forget_handed()
    try:
        _run_trial(config, data, ctx, tags, run_name)
    finally:
        _closed.set()


def _run_trial(config: dict[str, Any], data: Dataset, ctx: TrialContext,
               tags: dict[str, str] | None, run_name: str | None) -> None:
    from ray import tune

    from pipelines.sweep.member import member_life

    os.environ[REUSE_WAIT_ENV] = str(REUSE_WAIT_S)
    started = time.time()
    trial_id = tune.get_context().get_trial_id()
    if ctx.perturb:  # a population member: its values sit under population.MEMBER
        from pipelines.sweep.population import member_values

        config = member_values(config)
    # Only the parameters this trial sampled are its params (no mlp_width on a dcgan
    # trial); its name shows them too (the report shortens it to those that differ).
    inactive = tuple(k for k in ctx.searched if k not in config)
    sampled = {k: config[k] for k in ctx.searched if k in config}
    to_tune = TuneCallbacks(ctx.rungs, reports_evals=ctx.workers_per_trial == 1, perturb=ctx.perturb)
    client = client_for(ctx.tracking_uri)
    run_id, fresh = open_child(client, ctx, trial_id, sampled, tags, run_name)
    opened = client.get_run(run_id)
    to_tune.name = opened.info.run_name
    # a population member's earlier lives (each wrote its wall time so far when paused)
    earlier = 0.0 if fresh else opened.data.metrics.get(names.WALL_S, 0.0)
    queued = 0.0 if fresh else opened.data.metrics.get(names.QUEUED_S, 0.0)  # their workers' waits
    loop = trial_loop(data, ctx, trial_id, to_tune)
    cfg = make_config(config)
    # ASHA stops a trial that trails; PBT never stops a member (it pauses it at a perturbation
    # epoch, TuneCallbacks.hand_over): a member stopped anywhere else was stopped by the driver
    stopped_reason = member_stopped_reason if ctx.perturb else pruned_reason
    # The lease keeps `train --resume` off a trial that is training; taken without a check:
    # Tune restarting this trial after its node died must not wait out the dead lease.
    with TrackedRun(client, run_id, fresh=fresh, prunable=True, pausable=bool(ctx.perturb),
                    before_close=lambda: trial_resources(client, run_id, ctx, started, to_tune.first_step,
                                                         earlier, queued),
                    on_closed=lambda result, uri: to_tune.closed(result, uri, lambda: logged_scores(client, run_id)),
                    ) as run:
        run.pruned_reason = lambda: stopped_reason(to_tune.epoch)  # Tune stops it in report()
        run.paused_by_tune = lambda: to_tune.handing_over
        restored = member_life(run, cfg, data, loop, to_tune, trial_id, inactive) if ctx.perturb else None
        run.train_and_close(cfg, data, loop, omit=inactive, restored=restored)


def trial_loop(data: Dataset, ctx: TrialContext, trial_id: str, to_tune: TuneCallbacks) -> Loop:
    """Where this trial trains: in this process (one worker), or on ctx.workers_per_trial
    Ray Train workers (Train V2 inside Tune: their reports reach Tune through
    TuneReportCallback, Tune's stop through TuneStoppableLoop). The run's lifecycle
    prepares it for the trial's config (Loop.prepare)."""
    where = {names.TRIAL_ID: trial_id}
    if ctx.workers_per_trial == 1:
        torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
        return InProcessLoop(data, wrap=to_tune.wrapping, extra=where, gpu=ctx.gpus_per_trial > 0)
    from pipelines.distributed.options import RayOptions
    from pipelines.distributed.trainer import RayTrainLoop

    opts = RayOptions(workers=ctx.workers_per_trial, gpu=ctx.gpus_per_trial > 0,
                      cpus_per_worker=max(1, int(ctx.cpus_per_trial)), storage_path=ctx.storage_path)
    workers = RayTrainLoop(opts, ctx.tracking_uri, data.shape, [train_to_tune(to_tune.name)], where,
                           pause_at=ctx.perturb, data_at=data.origin)
    stoppable = TuneStoppableLoop(workers, member_stopped_reason if ctx.perturb else pruned_reason)
    if not ctx.perturb:
        return stoppable
    from pipelines.sweep.member import PausingLoop

    return PausingLoop(stoppable, workers, to_tune)


def trial_resources(client: Any, run_id: str, ctx: TrialContext, started: float, first_step: float | None,
                    earlier: float = 0.0, queued: float = 0.0) -> None:
    """What the trial used (its slot's CPUs and GPUs, times its workers) over its lives
    (`earlier`: the seconds of those before this one), and how long this one took from its
    function's entry to its first step. A distributed trial's function holds no CPU, so it
    starts at once and its workers may then wait for theirs: what they waited in this life
    (the run's QUEUED_S beyond `queued`, what it was before) held nothing, and is left out."""
    workers = ctx.workers_per_trial
    waited = client.get_run(run_id).data.metrics.get(names.QUEUED_S, 0.0) - queued
    log_resources(client, run_id, started - earlier + waited, ctx.cpus_per_trial * workers,
                  ctx.gpus_per_trial * workers)
    if first_step is not None:
        client.set_tag(run_id, names.TRIAL_SECONDS_TO_FIRST_STEP, f"{first_step - started:.2f}")


def logged_scores(client: Any, run_id: str) -> dict[str, float]:
    metrics = client.get_run(run_id).data.metrics
    return {names.FID: math.nan, **{k: v for k, v in metrics.items() if k in (names.FID, names.BEST_FID, names.KID)}}
