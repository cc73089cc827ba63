"""How wide a data-parallel run is and where it runs: RayOptions (built by the CLI from
`gan-pipeline train`'s flags, or by a sweep for its trials), the config each worker runs,
and the params that record it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.config import ConfigError, RunConfig

DEFAULT_STORAGE = "./ray_results"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a run is."""

    workers: int = 1
    gpu: bool = False
    cpus_per_worker: int = 1
    ray_address: str | None = None  # None: $RAY_ADDRESS if set, else a new local Ray
    max_failures: int = 0  # worker-group restarts from the last checkpoint; -1: no limit
    storage_path: str = DEFAULT_STORAGE

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers} is invalid: must be a positive integer")
        if self.cpus_per_worker < 1:
            raise ConfigError(f"--cpus-per-worker {self.cpus_per_worker} is invalid: must be >= 1")
        if self.max_failures < -1:
            raise ConfigError(f"--max-failures {self.max_failures} is invalid: must be >= 0, or -1")

    @property
    def backend(self) -> str:
        return "nccl" if self.gpu else "gloo"

    @property
    def storage(self) -> str:
        """storage_path as Ray wants it: a URI (s3://...) as is, a local folder absolute."""
        if "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())


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
    for kind in ("folder:", "prepared:"):
        if dataset.startswith(kind):
            dataset = kind + str(Path(dataset[len(kind):]).expanduser().resolve())
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
