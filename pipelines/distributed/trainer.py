"""`gan-pipeline train --workers N`: the one training loop under Ray Train V2's
TorchTrainer, data-parallel (DDP: gloo on CPU, NCCL on GPU) over N workers.

The driver's side of a distributed run: it validates everything, creates the MLflow
run, fits (ScalingConfig, TorchConfig, FailureConfig, storage), then logs the GIF and
generator and marks the run FINISHED (or FAILED with the error). What each worker runs
is pipelines.distributed.worker.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gan.config import RunConfig
from gan.errors import UserError
from pipelines.distributed.connect import connect, disconnect, ray_address
from pipelines.distributed.options import RayOptions, run_params, worker_config
from pipelines.errors import ClusterError, RunDiverged, TrackingLost
from pipelines.tracking import names

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer
    from torch import nn

    from pipelines.training.local import RunOutcome


def check_resources(opts: RayOptions, fixed: bool) -> None:
    """A Ray Train run that asks for more than the cluster has waits forever: fail instead
    on a cluster that cannot grow (one this process started); warn on others."""
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
                 worker: Callable[[dict[str, Any]], None] | None = None) -> TorchTrainer:
    """The TorchTrainer of one run: N workers, each running `worker(loop_config)`
    (default pipelines.distributed.worker.train_worker; the benchmark passes its own)."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
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
        ),
    )


def run_distributed(cfg: RunConfig, opts: RayOptions, experiment: str | None = None,
                    run_name: str | None = None) -> RunOutcome:
    """Train over opts.workers Ray Train workers and record one MLflow run.

    --workers 1 is a local run (in-process, no Ray; on cuda with --gpu)."""
    from pipelines.tracking.inputs import log_dataset
    from pipelines.tracking.lease import lease
    from pipelines.tracking.runs import open_run, run_guard
    from pipelines.tracking.store import (
        absolute_uri,
        client_for,
        ensure_experiment,
        environment_tags,
        probe_store,
        tracking_uri,
    )
    from pipelines.training.local import run_local
    from pipelines.training.prepare import DEFAULT_EXPERIMENT, prepare

    experiment = experiment or DEFAULT_EXPERIMENT
    if opts.workers == 1:
        return run_local(dataclasses.replace(cfg, device="cuda") if opts.gpu else cfg,
                         experiment=experiment, run_name=run_name)

    # ---- everything a user can get wrong, before the MLflow run exists
    cfg = worker_config(cfg, opts)
    uri = absolute_uri(tracking_uri())  # workers open the store from their own folders
    probe_store(uri)  # bounded; before anything exists
    data = prepare(cfg, opts.workers, check_device=False)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, experiment)
    address = ray_address(opts.ray_address)
    started = connect(address, uri)
    try:
        local = started and address is None
        check_resources(opts, fixed=local)
        tags = environment_tags(cfg.dataset, f"{opts.workers}x{'cuda' if opts.gpu else 'cpu'}")
        run_id, experiment_id = open_run(client, experiment_id, run_name, tags)
        log_dataset(client, run_id, cfg.dataset, data)
        with lease(client, run_id), run_guard(client, run_id):
            return _fit_and_finish(client, experiment_id, run_id, cfg, opts, uri, data.shape)
    finally:
        if started:
            disconnect()


def _fit_and_finish(client: Any, experiment_id: str, run_id: str, cfg: RunConfig,
                    opts: RayOptions, uri: str, image_shape: tuple[int, int, int]) -> RunOutcome:
    from gan.checkpoint import load_checkpoint
    from gan.train import TrainResult
    from pipelines.distributed.worker import FAIL_ONCE_ENV, checkpoint_file
    from pipelines.tracking.history import logged_eval_history, logged_grids
    from pipelines.tracking.runs import diverged_reason, fail_diverged, finish_run, log_run_config
    from pipelines.training.local import RunOutcome

    log_run_config(client, run_id, cfg, run_params(opts))
    name = f"gan-{run_id}"  # Ray's folder of this run, named after the MLflow run
    client.set_tag(run_id, names.RAY_STORAGE, f"{opts.storage.rstrip('/')}/{name}")
    loop_config = {
        "cfg": cfg.to_dict(), "tracking_uri": uri, "run_id": run_id,
        "threads": opts.cpus_per_worker, "fail_once": os.environ.get(FAIL_ONCE_ENV),
    }
    try:
        result = make_trainer(opts, loop_config, name).fit()
    except Exception as e:  # noqa: BLE001 - Ray's errors wrap the workers'; say which
        causes = _worker_causes(e)
        first = next(iter(causes.values()), None)
        if isinstance(first, (UserError, TrackingLost)):
            raise first from e  # already one line for the user (a dataset missing on a node)
        raise DistributedTrainingError(_worker_summary(e, causes)) from e
    reason = diverged_reason(client, run_id)  # rank 0 wrote it when the guard stopped the loop
    if reason:
        with tempfile.TemporaryDirectory() as tmp:
            fail_diverged(client, run_id, logged_grids(client, run_id, tmp), reason)
        raise RunDiverged(f"run {run_id} is FAILED: {reason}")
    if result.checkpoint is None:
        raise DistributedTrainingError("the workers finished without reporting a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(checkpoint_file(folder))
    generator = final_generator(cfg, image_shape, state)
    with tempfile.TemporaryDirectory() as tmp:
        frames = logged_grids(client, run_id, tmp)  # rank 0 logged them; the GIF is made here
    model_uri = finish_run(client, run_id, cfg, generator, frames, image_shape,
                           epoch=int(state["epoch"]), step=int(state["step"]))
    history = logged_eval_history(client, run_id)
    done = TrainResult(epochs_done=int(state["epoch"]), step=int(state["step"]),
                       generator=generator, eval_history=history)
    return RunOutcome(run_id, experiment_id, done, model_uri)


class DistributedTrainingError(RuntimeError):
    """A Ray Train run failed; the first line names the failing rank and its error."""


def _worker_causes(error: BaseException) -> dict[int, BaseException]:
    """The exception each failed rank raised, by rank (empty for a controller error)."""
    failures = getattr(error, "worker_failures", None) or {}
    # Train V2 wraps a worker's own exception (in _base_exc) to carry its traceback text.
    return {rank: getattr(e, "_base_exc", None) or e for rank, e in sorted(failures.items())}


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
