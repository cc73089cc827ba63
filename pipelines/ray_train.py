"""`gan-pipeline train --workers N`: the one training loop under Ray Train V2's
TorchTrainer, data-parallel (DDP: gloo on CPU, NCCL on GPU) over N workers.

This module owns where a distributed run happens: the flags, the Ray connection (join
--ray-address / $RAY_ADDRESS, else start a local Ray), ScalingConfig, TorchConfig,
FailureConfig and storage, and the driver's side of the MLflow run: it validates
everything, creates the run, fits, then logs the GIF and generator and marks the run
FINISHED (or FAILED with the error). What each worker runs is pipelines.ray_worker.

Imports of torch, ray and mlflow stay inside functions so `gan-pipeline --help` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from ray.train.torch import TorchTrainer
    from torch import nn

    from pipelines.training import RunOutcome

DEFAULT_STORAGE = "./ray_results"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a run is; everything here is a flag of `gan-pipeline train`."""

    workers: int = 1
    gpu: bool = False
    cpus_per_worker: int = 1
    ray_address: str | None = None  # None: $RAY_ADDRESS if set, else a new local Ray
    max_failures: int = 0  # worker-group restarts from the last checkpoint; -1: no limit
    storage_path: str = DEFAULT_STORAGE

    @property
    def backend(self) -> str:
        return "nccl" if self.gpu else "gloo"

    @property
    def storage(self) -> str:
        """storage_path as Ray wants it: a URI (s3://...) as is, a local folder absolute."""
        if "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a distributed run (all no-ops at the default --workers 1)."""
    g = parser.add_argument_group("distributed (Ray Train)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="data-parallel workers; N > 1 runs under Ray Train "
                   "(default: 1, in-process)")
    g.add_argument("--gpu", action="store_true",
                   help="one GPU per worker, NCCL (with --workers 1: in-process on cuda, no Ray)")
    g.add_argument("--cpus-per-worker", type=int, default=1, metavar="N",
                   help="CPUs (and torch threads) per worker (default: 1)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray)")
    g.add_argument("--max-failures", type=int, default=0, metavar="N",
                   help="restarts of a failed worker group from its last checkpoint "
                   "(-1: unlimited; default: 0)")
    g.add_argument("--ray-storage", default=DEFAULT_STORAGE, metavar="PATH",
                   help="Ray Train checkpoints and state; shared storage on a multi-node "
                   f"cluster (default: {DEFAULT_STORAGE})")


def options_from_args(args: argparse.Namespace) -> RayOptions:
    """The parsed flags as RayOptions, each bad value a one-line ConfigError."""
    opts = RayOptions(
        workers=args.workers, gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
        ray_address=args.ray_address, max_failures=args.max_failures, storage_path=args.ray_storage,
    )
    if opts.workers < 1:
        raise ConfigError(f"--workers {opts.workers} is invalid: must be a positive integer")
    if opts.cpus_per_worker < 1:
        raise ConfigError(f"--cpus-per-worker {opts.cpus_per_worker} is invalid: must be >= 1")
    if opts.max_failures < -1:
        raise ConfigError(f"--max-failures {opts.max_failures} is invalid: must be >= 0, or -1")
    return opts


def worker_config(cfg: RunConfig, opts: RayOptions) -> RunConfig:
    """The config every worker runs: device from --gpu, paths absolute (workers run in
    other folders, maybe on other machines). Refuses what cannot work before any run."""
    from gan.distributed import check_sync_bn

    if cfg.device.startswith("cuda") and not opts.gpu:
        raise ConfigError(f"device={cfg.device!r} with --workers {opts.workers} needs --gpu "
                          "(Ray Train gives each worker its own GPU)")
    if cfg.device.startswith("cuda:"):
        raise ConfigError(f"device={cfg.device!r} is invalid with --workers: use --gpu "
                          "(Ray Train picks each worker's GPU)")
    device = "cuda" if opts.gpu else "cpu"
    check_sync_bn(cfg.sync_bn, device)
    dataset = cfg.dataset
    if dataset.startswith("folder:"):
        dataset = "folder:" + str(Path(dataset[len("folder:"):]).expanduser().resolve())
    data_dir = str(Path(cfg.data_dir).expanduser().resolve())
    return dataclasses.replace(cfg, device=device, dataset=dataset, data_dir=data_dir)


def run_params(opts: RayOptions) -> dict[str, Any]:
    """Where the run ran, logged next to the config as MLflow params."""
    return {
        "world_size": opts.workers, "num_workers": opts.workers,
        "device_type": "cuda" if opts.gpu else "cpu", "backend": opts.backend,
        "cpus_per_worker": opts.cpus_per_worker, "gpus_per_worker": int(opts.gpu),
        "max_failures": opts.max_failures,
    }


def connect(opts: RayOptions) -> bool:
    """Join or start Ray; True when this call started it (so it should shut it down)."""
    import ray

    if ray.is_initialized():  # a caller's session (a test, a Tune driver): use it
        return False
    address = opts.ray_address or os.environ.get("RAY_ADDRESS")
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"ray_address={address!r} is invalid: cannot connect ({first})") from None
    from pipelines.tracking import TrackingError, tracking_uri

    try:
        check_store_for_cluster(tracking_uri(), sum(1 for n in ray.nodes() if n.get("Alive")))
    except TrackingError:
        ray.shutdown()
        raise
    return True


def check_store_for_cluster(uri: str, alive_nodes: int) -> None:
    """A local sqlite/file store lives on one machine: workers on other nodes cannot write
    it. Refuse it on a multi-node cluster and say what to use."""
    from pipelines.tracking import TrackingError

    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    if alive_nodes > 1 and local:
        raise TrackingError(
            f"tracking store {uri!r} is a local file but the Ray cluster has {alive_nodes} nodes: "
            "set MLFLOW_TRACKING_URI to a tracking server every node reaches "
            "(e.g. http://HEAD_IP:5000, the server ray_cluster.yaml starts on the head)"
        )


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """ray.init retries an unreachable HOST:PORT for minutes; a TCP probe fails in seconds."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray_address={address!r} is invalid: must be HOST:PORT, "
                          "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"ray_address={address!r} is invalid: nothing answers there "
                          f"({e.strerror or e}); is the cluster up?") from None


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
                raise ConfigError(msg + " (lower --workers or --cpus-per-worker)")
            print(f"warning: {msg}; waiting for the cluster to grow", file=sys.stderr)


def make_trainer(opts: RayOptions, loop_config: dict[str, Any], name: str,
                 worker: Callable[[dict[str, Any]], None] | None = None) -> TorchTrainer:
    """The TorchTrainer of one run: N workers, each running `worker(loop_config)`
    (default pipelines.ray_worker.train_worker; the benchmark passes its own)."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if worker is None:
        from pipelines.ray_worker import train_worker as worker

    resources = {"CPU": opts.cpus_per_worker, **({"GPU": 1} if opts.gpu else {})}
    return TorchTrainer(
        worker,
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
    from pipelines.tracking import (
        absolute_uri,
        check_writable,
        client_for,
        ensure_experiment,
        environment_tags,
        tracking_uri,
    )
    from pipelines.training import DEFAULT_EXPERIMENT, open_run, prepare, run_guard, run_local

    experiment = experiment or DEFAULT_EXPERIMENT
    if opts.workers == 1:
        return run_local(dataclasses.replace(cfg, device="cuda") if opts.gpu else cfg,
                         experiment=experiment, run_name=run_name)

    # ---- everything a user can get wrong, before the MLflow run exists
    cfg = worker_config(cfg, opts)
    uri = absolute_uri(tracking_uri())  # workers open the store from their own folders
    check_writable(uri)
    data = prepare(cfg, opts.workers, check_device=False)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, experiment)
    started = connect(opts)
    try:
        local = started and not (opts.ray_address or os.environ.get("RAY_ADDRESS"))
        check_resources(opts, fixed=local)
        tags = environment_tags(cfg.dataset, f"{opts.workers}x{'cuda' if opts.gpu else 'cpu'}")
        run_id, experiment_id = open_run(client, experiment_id, run_name, tags)
        with run_guard(client, run_id):
            return _fit_and_finish(client, experiment_id, run_id, cfg, opts, uri, data.shape)
    finally:
        if started:
            import ray

            ray.shutdown()


def _fit_and_finish(client: Any, experiment_id: str, run_id: str, cfg: RunConfig,
                    opts: RayOptions, uri: str, image_shape: tuple[int, int, int]) -> RunOutcome:
    from gan.checkpoint import load_checkpoint
    from gan.train import TrainResult
    from pipelines.ray_worker import FAIL_ONCE_ENV, checkpoint_file
    from pipelines.tracking import logged_eval_history, logged_grids
    from pipelines.training import RunOutcome, finish_run, log_run_config

    log_run_config(client, run_id, cfg, run_params(opts))
    name = f"gan-{run_id}"  # Ray's folder of this run, named after the MLflow run
    client.set_tag(run_id, "ray.storage", f"{opts.storage.rstrip('/')}/{name}")
    loop_config = {
        "cfg": cfg.to_dict(), "tracking_uri": uri, "run_id": run_id,
        "threads": opts.cpus_per_worker, "fail_once": os.environ.get(FAIL_ONCE_ENV),
    }
    try:
        result = make_trainer(opts, loop_config, name).fit()
    except Exception as e:  # noqa: BLE001 - Ray's errors wrap the workers'; say which
        from pipelines.cli import user_errors

        causes = _worker_causes(e)
        first = next(iter(causes.values()), None)
        if isinstance(first, user_errors()):
            raise first from e  # already one line for the user (a dataset missing on a node)
        raise DistributedTrainingError(_worker_summary(e, causes)) from e
    if result.checkpoint is None:
        raise DistributedTrainingError("the workers finished without reporting a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(checkpoint_file(folder))
    generator = final_generator(cfg, image_shape, state)
    with tempfile.TemporaryDirectory() as tmp:
        frames = logged_grids(client, run_id, tmp)  # rank 0 logged them; the GIF is made here
    model_uri = finish_run(client, run_id, cfg, generator, frames)
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
