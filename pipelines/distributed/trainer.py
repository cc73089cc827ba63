"""`gan-pipeline train --workers N`: the one training loop under Ray Train V2's
TorchTrainer, data-parallel (DDP: gloo on CPU, NCCL on GPU) over N workers.

The driver's side of a distributed run: it validates everything, creates the MLflow
run and owns it (tracking.runs.TrackedRun: lease, config, how it ends), and fits
(ScalingConfig, TorchConfig, FailureConfig, storage) through RayTrainLoop, the Loop a
sweep's distributed trials use too. What each worker runs is pipelines.distributed.worker.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gan.config import RunConfig
from gan.errors import UserError
from pipelines.distributed.connect import check_local_fit, connect, disconnect, ray_address
from pipelines.distributed.options import RayOptions, run_params, worker_config
from pipelines.errors import ClusterError, RunDiverged, TrackingLost
from pipelines.tracking import names

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer
    from torch import nn

    from gan.train import TrainResult
    from pipelines.tracking.history import Restored
    from pipelines.tracking.runs import RunHandle, TrackedRun
    from pipelines.training.local import RunOutcome


def check_resources(opts: RayOptions, fixed: bool) -> None:
    """A Ray Train run that asks for more than the cluster has waits forever: fail instead
    on a cluster that cannot grow (one this process started); warn on others. (A local
    Ray's CPUs were judged at the door, before the store: connect.check_local_fit.)"""
    import ray

    have = ray.cluster_resources()
    need = {"CPU": opts.workers * opts.cpus_per_worker, "GPU": opts.workers if opts.gpu else 0}
    for kind, n in need.items():
        if n and have.get(kind, 0) < n:
            msg = (f"--workers {opts.workers} needs {n} {kind}s in all but the Ray cluster has "
                   f"{have.get(kind, 0):g}")
            if fixed:
                raise ClusterError(msg + " (lower --workers or --cpus-per-worker)")
            print(f"warning: {msg}; waiting for the cluster to grow", file=sys.stderr)


def make_trainer(opts: RayOptions, loop_config: dict[str, Any], name: str,
                 worker: Callable[[dict[str, Any]], None] | None = None,
                 callbacks: list[Any] | None = None) -> TorchTrainer:
    """The TorchTrainer of one run: N workers, each running `worker(loop_config)`
    (default pipelines.distributed.worker.train_worker; the benchmark passes its own);
    `callbacks`: Ray Train callbacks (a sweep trial's TuneReportCallback)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.distributed.worker import train_worker

    resources = {"CPU": opts.cpus_per_worker, **({"GPU": 1} if opts.gpu else {})}
    return TorchTrainer(
        worker or train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=opts.backend),
        scaling_config=ScalingConfig(num_workers=opts.workers, use_gpu=opts.gpu,
                                     resources_per_worker=resources),
        run_config=RayRunConfig(
            name=name,
            storage_path=opts.storage,
            failure_config=FailureConfig(max_failures=opts.max_failures),
            # MLflow keeps every checkpoint; Ray only needs the newest to restart from.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or None,
            # Ray Train's INFO lines (each worker's every report and checkpoint, with the
            # whole metrics dict) drowned the run's own progress lines; its warnings (a
            # worker group waiting for resources, a restart) still reach the console.
            # (mypy reads Train V1's RunConfig; V2, the one Ray runs, has logging_config)
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
        ),
    )


def run_distributed(cfg: RunConfig, opts: RayOptions, experiment: str | None = None,
                    run_name: str | None = None, tags: dict[str, str] | None = None,
                    warm: dict[str, Any] | None = None) -> RunOutcome:
    """Train over opts.workers Ray Train workers and record one MLflow run. `tags`: more
    tags of the run (where it came from); `warm`: a checkpoint to fine-tune (run_local's).

    --workers 1 is a local run (in-process, no Ray; on cuda with --gpu)."""
    import torch

    from pipelines.tracking.opening import open_run
    from pipelines.tracking.runs import TrackedRun
    from pipelines.tracking.store import (
        absolute_uri,
        client_for,
        ensure_experiment,
        environment_tags,
        probe_store,
        tracking_uri,
    )
    from pipelines.training.local import RunOutcome, run_local
    from pipelines.training.prepare import DEFAULT_EXPERIMENT, build_evaluator, prepare

    experiment = experiment or DEFAULT_EXPERIMENT
    if opts.workers == 1:
        return run_local(dataclasses.replace(cfg, device="cuda") if opts.gpu else cfg,
                         experiment=experiment, run_name=run_name, tags=tags, warm=warm)

    # ---- everything a user can get wrong, before the MLflow run exists
    cfg = worker_config(cfg, opts)
    address = ray_address(opts.ray_address)
    check_local_fit(address, opts.workers * opts.cpus_per_worker,
                    f"--workers {opts.workers} x --cpus-per-worker {opts.cpus_per_worker}")
    uri = absolute_uri(tracking_uri())  # workers open the store from their own folders
    probe_store(uri)  # bounded; before anything exists
    data = prepare(cfg, opts.workers, check_device=False, warm=warm)
    # A backbone the dataset cannot use is bad input, not a failed run: build it once here
    # (its one-time work is cached on disk for the workers of this machine).
    build_evaluator(cfg, data, torch.device("cpu"))
    client = client_for(uri)
    experiment_id = ensure_experiment(client, experiment)
    started = connect(address, uri)
    try:
        local = started and address is None
        check_resources(opts, fixed=local)
        where = environment_tags(cfg.dataset, f"{opts.workers}x{'cuda' if opts.gpu else 'cpu'}")
        run_id, experiment_id = open_run(client, experiment_id, run_name, {**where, **(tags or {})})
        with TrackedRun(client, run_id, fresh=True, warm=warm) as run:
            result, model_uri = run.train_and_close(cfg, data, RayTrainLoop(opts, uri, data.shape, progress=True,
                                                                              data_at=data.origin))
            if model_uri is None:
                raise RunDiverged(f"run {run_id} is FAILED: {result.stopped}")
            return RunOutcome(run_id, experiment_id, result, model_uri)
    finally:
        if started:
            disconnect()


@dataclass
class RayTrainLoop:
    """The one loop on opts.workers Ray Train workers (tracking.runs.Loop): the run's
    owner stays here, its rank 0 writes into the run through the owner's handle.
    `callbacks`: Ray Train callbacks (a sweep trial's TuneReportCallback). `pause_at`:
    epochs where the workers stop (a population member's perturbation epochs); a fit
    given a training state (Restored.state: a member's next life) starts from it."""

    opts: RayOptions
    tracking_uri: str
    image_shape: tuple[int, int, int]
    callbacks: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # more params (a trial's id)
    pause_at: tuple[int, ...] = ()
    progress: bool = False  # rank 0 prints a line per epoch (train --workers; a sweep prints its own)
    data_at: str | None = None  # the prepared dataset the driver resolved (Dataset.origin): workers read it
    restores_itself = True  # a restarted worker group resumes from Ray Train's own storage
    last_state: dict[str, Any] | None = None  # the newest checkpoint's, after fit

    @property
    def where(self) -> dict[str, Any]:
        return {**run_params(self.opts), **self.extra}

    def prepare(self, cfg: RunConfig) -> RunConfig:
        return worker_config(cfg, self.opts)

    def fit(self, run: TrackedRun, cfg: RunConfig, restored: Restored) -> TrainResult:
        result, self.last_state = fit_run(run.handle(self.tracking_uri), cfg, self.opts, self.image_shape,
                                          self.callbacks, warm=restored.warm, resume=restored.state,
                                          pause_at=self.pause_at, progress=self.progress, data_at=self.data_at)
        return result


def fit_run(handle: RunHandle, cfg: RunConfig, opts: RayOptions, image_shape: tuple[int, int, int],
            callbacks: list[Any] | None = None, warm: dict[str, Any] | None = None,
            resume: dict[str, Any] | None = None, pause_at: tuple[int, ...] = (), progress: bool = False,
            data_at: str | None = None) -> tuple[TrainResult, dict[str, Any] | None]:
    """The one loop on opts.workers Ray Train workers, rank 0 writing into the run
    `handle` names (its owner holds the lease and closes it), from `resume` (a training
    state) if given, stopping at the first of `pause_at` it reaches. Returns what a local
    loop returns (the final generator from the last checkpoint, the eval history, whether
    the health guard stopped it) and that checkpoint's whole state. `data_at`: the
    prepared dataset's folder the driver resolved (a folder's copy, a streamed built-in's):
    every worker reads that one, on a filesystem every node sees, and none prepares."""
    from gan.checkpoint import load_checkpoint
    from gan.models import build_models
    from gan.train import TrainResult
    from pipelines.distributed.worker import checkpoint_file
    from pipelines.tracking.ending import diverged_reason
    from pipelines.tracking.history import logged_eval_history
    from pipelines.tracking.store import client_for

    client = client_for(handle.tracking_uri)
    # Ray's folder of this run, named after the MLflow run: Ray Train restarts a run from
    # the newest checkpoint in its folder, so a life started from a given state (a member's,
    # at the epoch it was handed) has a folder of its own.
    name = f"gan-{handle.run_id}" + (f"-from-epoch-{resume['epoch']}" if resume is not None else "")
    client.set_tag(handle.run_id, names.RAY_STORAGE, f"{opts.storage.rstrip('/')}/{name}")
    # `warm` (a fine-tune's starting checkpoint) travels with the config: Ray puts large
    # arguments in its object store, so every worker, on any node, gets the same weights.
    loop_config = {"cfg": cfg.to_dict(), "handle": handle, "threads": opts.cpus_per_worker, "warm": warm,
                   "resume": resume, "pause_at": pause_at, "progress": progress, "data_at": data_at}
    try:
        fitted = make_trainer(opts, loop_config, name, callbacks=callbacks).fit()
    except Exception as e:  # noqa: BLE001 - Ray's errors wrap the workers'; say which
        causes = _worker_causes(e)
        first = next(iter(causes.values()), None)
        if isinstance(first, (UserError, TrackingLost)):
            raise first from e  # already one line for the user (a dataset missing on a node)
        raise DistributedTrainingError(_worker_summary(e, causes)) from e
    reason = diverged_reason(client, handle.run_id)  # rank 0 wrote it when the guard stopped the loop
    if fitted.checkpoint is None and reason is None:
        raise DistributedTrainingError("the workers finished without reporting a checkpoint")
    state: dict[str, Any] | None = None
    if fitted.checkpoint is not None:
        with fitted.checkpoint.as_directory() as folder:
            state = load_checkpoint(checkpoint_file(folder))
    generator = final_generator(cfg, image_shape, state) if state is not None \
        else build_models(cfg, image_shape)[0].eval()
    result = TrainResult(epochs_done=int(state["epoch"]) if state else 0, step=int(state["step"]) if state else 0,
                         generator=generator, eval_history=logged_eval_history(client, handle.run_id),
                         stopped=reason, diverged=reason is not None)
    return result, state


class DistributedTrainingError(RuntimeError):
    """A Ray Train run failed; the first line names the failing rank and its error."""


def _worker_causes(error: BaseException) -> dict[int, BaseException]:
    """The exception each failed rank raised, by rank (empty for a controller error)."""
    from pipelines.compat.ray_api import worker_causes

    return worker_causes(error)  # unwrapped from Train V2's traceback wrapper (a private attribute)


def _worker_summary(error: BaseException, causes: dict[int, BaseException]) -> str:
    """One line out of Ray's multi-line error: 'rank 1: ValueError: ...' where known."""
    parts = []
    for rank, cause in causes.items():
        first = (str(cause).strip().splitlines() or [""])[0]
        if len(first) > 200:  # Ray's actor-death text runs on; its first sentence says it
            first = first.split(". ")[0] + "."
        parts.append(f"rank {rank}: {type(cause).__name__}: {first}")
    if parts:
        return "; ".join(parts)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def final_generator(cfg: RunConfig, image_shape: tuple[int, int, int],
                    state: dict[str, Any]) -> nn.Module:
    """The sampling generator of a checkpoint: its EMA weights when it has them, else G."""
    from gan.models import build_models

    generator, _ = build_models(cfg, image_shape)
    generator.load_state_dict(state["G_ema"] or state["G"])
    return generator.eval()
