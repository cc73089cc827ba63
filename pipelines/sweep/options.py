"""A sweep's settings: SweepOptions (built by the CLI from `gan-pipeline sweep`'s flags),
filled in from the space file's `sweep:` block and checked, one line per bad value."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gan.config import ConfigError
from pipelines.distributed.connect import check_local_fit, ray_address
from pipelines.distributed.options import DEFAULT_STORAGE
from pipelines.sweep.space import SearchSpace, resolve_path
from pipelines.tracking import names

DEFAULT_SPACE = "quick"
DEFAULT_EXPERIMENT = "gan-pipelines"
METRIC, MODE = names.FID, "min"
SCHEDULERS = ("asha", "none", "pbt", "pb2")
POPULATION = ("pbt", "pb2")  # population-based training (population.py)
SEARCHERS = ("tpe", "random")


@dataclass(frozen=True)
class SweepOptions:
    """A sweep's settings; None means "from the space file's `sweep:` block, else default"."""

    space: str = DEFAULT_SPACE
    trials: int | None = None
    concurrency: int | None = None
    scheduler: str = "asha"
    grace_period: int | None = None  # evals a trial runs before ASHA may stop it
    perturb_every: int | None = None  # pbt/pb2: epochs between perturbations
    searcher: str = "tpe"
    experiment: str = DEFAULT_EXPERIMENT
    seed: int = 0
    name: str | None = None
    workers_per_trial: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage_path: str = DEFAULT_STORAGE
    ray_address: str | None = None
    warm_start: str | None = None  # an earlier sweep whose scored trials seed the searcher (seeding.py)

    def resolved(self, space: SearchSpace) -> Sweep:
        """Every None filled in; every value checked (ConfigError, one line)."""
        d = space.sweep
        out = Sweep(
            space=str(resolve_path(self.space)),
            trials=d.get("trials", 10) if self.trials is None else self.trials,
            concurrency=d.get("concurrency", 1) if self.concurrency is None else self.concurrency,
            scheduler=self.scheduler,
            grace_period=d.get("grace_period", 1) if self.grace_period is None else self.grace_period,
            perturb_every=(0 if self.scheduler not in POPULATION
                           else d.get("perturb_every", max(1, space.max_value("epochs") // 4))
                           if self.perturb_every is None else self.perturb_every),
            searcher=self.searcher, experiment=self.experiment, seed=self.seed,
            name=self.name or f"sweep-{Path(space.path).stem}-{time.strftime('%Y%m%d-%H%M%S')}",
            workers_per_trial=self.workers_per_trial, cpus_per_trial=self.cpus_per_trial,
            gpus_per_trial=self.gpus_per_trial, storage_path=self.storage_path, ray_address=self.ray_address,
            warm_start=self.warm_start,
        )
        for flag, v in (("--trials", out.trials), ("--concurrency", out.concurrency),
                        ("--grace-period", out.grace_period),
                        ("--workers-per-trial", out.workers_per_trial)):
            if v < 1:
                raise ConfigError(f"{flag} {v} is invalid: must be a positive integer")
        if out.scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler {out.scheduler!r} is invalid: must be asha, none, pbt or pb2")
        if out.searcher not in SEARCHERS:
            raise ConfigError(f"--searcher {out.searcher!r} is invalid: must be tpe or random")
        if not out.cpus_per_trial > 0:
            raise ConfigError(f"--cpus-per-trial {out.cpus_per_trial} is invalid: must be > 0")
        if not out.gpus_per_trial >= 0:
            raise ConfigError(f"--gpus-per-trial {out.gpus_per_trial} is invalid: must be >= 0 "
                              "(fractions share a GPU, e.g. 0.5)")
        check_local_fit(ray_address(out.ray_address), out.cpus_per_trial * out.workers_per_trial,
                        f"a trial of --workers-per-trial {out.workers_per_trial} x --cpus-per-trial "
                        f"{out.cpus_per_trial:g}")
        if out.workers_per_trial > 1 and 0 < out.gpus_per_trial < 1:
            raise ConfigError("--gpus-per-trial below 1 is invalid with --workers-per-trial > 1: "
                              "each Ray Train worker takes a whole GPU")
        if not out.name or any(c in out.name for c in "/'\"\\") or out.name.startswith("."):
            raise ConfigError(f"--name {out.name!r} is invalid: must be a plain folder name (no quotes)")
        every, epochs = space.max_value("eval_every"), space.max_value("epochs")
        if out.scheduler == "asha" and out.grace_period * every > epochs:
            raise ConfigError(f"--grace-period {out.grace_period} is invalid: {out.grace_period} evals of "
                              f"eval_every {every} pass the last epoch ({epochs}); at most {max(1, epochs // every)}")
        if self.perturb_every is not None and out.scheduler not in POPULATION:
            raise ConfigError(f"--perturb-every is invalid with --scheduler {out.scheduler}: "
                              "it times a population's perturbations (--scheduler pbt or pb2)")
        return out  # a population's own checks: population.check_population (it builds on these)


@dataclass(frozen=True)
class Sweep:
    """A sweep's settings with every value filled in and checked (SweepOptions.resolved);
    saved as sweep.json next to the Tune state, so a resumed sweep uses the same."""

    space: str
    trials: int
    concurrency: int
    scheduler: str
    grace_period: int  # evals a trial runs before ASHA may stop it
    searcher: str
    experiment: str
    seed: int
    name: str
    workers_per_trial: int
    cpus_per_trial: float
    gpus_per_trial: float
    storage_path: str
    ray_address: str | None
    warm_start: str | None = None
    # The Tune experiment's folder name when it is not the sweep's: an extension of a
    # finished sweep (--resume NAME --trials N) runs as a new Tune experiment, NAME-more-K,
    # so the finished one's state stays as it was. Defaults keep older sweep.json readable.
    tune_folder: str | None = None
    perturb_every: int = 0  # pbt/pb2 (0 in an ASHA sweep's, and older, sweep.json)

    @property
    def how(self) -> str:
        """How the trials are chosen and run, as the sweep's first line says."""
        if self.scheduler not in POPULATION:
            return f"{self.concurrency} at a time, {self.searcher} + {self.scheduler}"
        return (f"a population ({self.scheduler}, QMC-drawn, perturbed every {self.perturb_every} epochs; "
                "as many at a time as the cluster's CPUs/GPUs fit)")

    @property
    def folder(self) -> Path:
        """The Tune experiment folder of this sweep (state, space copy, server log)."""
        return Path(self.storage_path).expanduser().resolve() / (self.tune_folder or self.name)
