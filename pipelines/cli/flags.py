"""The flags of the commands: every RunConfig field as a flag (defaults from the config,
overridden by --config YAML, overridden by flags), the Ray Train flags, the sweep flags;
and the option objects built from them."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from gan.config import ARCHS, BACKBONES, LOSSES, NORMS, ConfigError, RunConfig, config_from_sources, make_config
from pipelines.distributed.options import DEFAULT_STORAGE, RayOptions
from pipelines.sweep.options import DEFAULT_EXPERIMENT, DEFAULT_SPACE, SCHEDULERS, SEARCHERS, SweepOptions

FLAG_HELP = {
    "dataset": "mnist-5k (embedded, offline), mnist, fashion-mnist, cifar10, svhn, folder:PATH (prepared once "
    "into --data-dir on first use), or prepared:PATH (gan-pipeline data prepare)",
    "data_dir": "where torchvision datasets are found or downloaded, and prepared copies kept (DIR/prepared)",
    "image_size": "resize images to this square size (0: the dataset's own; folders: 32)",
    "data_mode": "memory: hold the whole dataset in each process; stream: read each batch from the prepared "
    "shards (no process holds the dataset); auto: stream past --data-budget-mb",
    "data_budget_mb": "decoded dataset size in MB up to which --data-mode auto holds it in memory",
    "arch": "model family: " + ", ".join(ARCHS),
    "latent_dim": "size of the latent vector z",
    "dcgan_width": "DCGAN channels next to the image (doubles per level inward)",
    "mlp_width": "MLP width: G hidden sizes w-2w-4w-8w, D 4w-2w (128 = the tutorial)",
    "spectral_norm": "spectral norm on D's layers (replaces D's BatchNorm in dcgan)",
    "g_norm": "normalisation in G: " + ", ".join(NORMS)
    + " (none: no BatchNorm, so N workers match 1 worker exactly)",
    "epochs": "passes over the dataset",
    "batch_size": "global batch size (split evenly over workers)",
    "lr_g": "Adam learning rate of G",
    "lr_d": "Adam learning rate of D",
    "beta1": "Adam beta1 of both networks, in [0, 1)",
    "beta2": "Adam beta2 of both networks, in [0, 1)",
    "label_smoothing": "one-sided smoothing s: D's real target is 1 - s, in [0, 0.5)",
    "loss": "GAN loss: " + ", ".join(LOSSES),
    "n_dis": "D steps per G step",
    "ema": "EMA decay of G's weights for sampling/eval (0 = off, e.g. 0.999); warmed up: its half-life is "
    "at most 1%% of the images seen, so it starts as G and reaches this decay later",
    "seed": "random seed: same config + seed = same losses on CPU",
    "eval_every": "epochs between sample grids (always drawn) and FID-style evals (when --eval-budget allows; "
    "the last epoch is always scored)",
    "eval_budget": "most of the training time periodic evals may take (default 0.05; 0: every --eval-every "
    "epochs, whatever they cost)",
    "eval_at": "score after exactly these epochs (and the last), e.g. 2,4,5, instead of --eval-every and "
    "--eval-budget (`confirm` scores its runs where their trial scored)",
    "checkpoint_every": "epochs between full-state checkpoints",
    "keep_checkpoints": "newest checkpoints a run keeps, plus the one of its best eval (0: keep all)",
    "log_every": "steps between batched metric writes",
    "health_guard": "stop (and fail) a run whose losses or images turn NaN/inf, whose D loss collapses "
    "or whose G loss blows up (--no-health-guard: watch it fail)",
    "health_d_floor": "health: D loss below this for --health-window steps means D won outright",
    "health_g_ceiling": "health: G loss above this for --health-window steps means G blew up",
    "health_window": "health: steps a collapse or blow-up must last to count",
    "health_g_limit": "health: a G loss beyond this stops the run at once",
    "backbone": "feature network of the FID-style metrics: " + ", ".join(BACKBONES),
    "eval_samples": "generated images per evaluation",
    "device": "auto (cuda if present), cpu, cuda or cuda:N",
    "amp": "mixed precision on CUDA (bf16 where supported, else fp16)",
    "sync_bn": "SyncBatchNorm across DDP workers instead of per-worker statistics",
}
assert set(FLAG_HELP) == {f.name for f in dataclasses.fields(RunConfig)}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def experiment_name(text: str) -> str:
    """--experiment: any non-blank name (MLflow's own rule), at most 256 characters."""
    if not text.strip() or len(text) > 256:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: must be a non-empty name of at most 256 characters")
    return text


def plain_name(text: str) -> str:
    """A sweep name or run id: it becomes a folder and part of MLflow search filters."""
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: must be letters, digits, '.', '_' or '-' "
                                         "(at most 128, not starting with '.' or '-')")
    return text


_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+|[^/@\s']+/[0-9]+|[^/@\s']+@[^/@\s']+)$")


def source_ref(text: str) -> str:
    """--from: a run id (plain_name), or a models:/ URI of one of the forms
    registry.lookup.resolve_model reads (a LoggedModel, a version, an alias)."""
    if _MODEL_URI.match(text):
        return text
    try:
        return plain_name(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: give a run id, or models:/<model_id>, "
                                         "models:/NAME/VERSION or models:/NAME@alias") from None


def add_config_flags(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        helptext = f"{FLAG_HELP[f.name]} (default: {default})"
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            p.add_argument(flag, dest=f.name, type=type(default), default=None, metavar=f.name.upper(), help=helptext)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then --config's YAML (or `base`: the config.yaml of the run `train --from`
    names, checked on its own first), then the flags given explicitly."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    if base is None:
        return config_from_sources(args.config, overrides)
    try:
        make_config(base)
    except ConfigError as e:
        raise ConfigError(f"--from {args.from_run}: its config.yaml: {e}") from None
    return make_config({**base, **{k: v for k, v in overrides.items() if v is not None}})


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


def ray_options(args: argparse.Namespace) -> RayOptions:
    """`train`'s Ray flags as RayOptions (which check their own values); --ray-storage is
    checked only where Ray Train uses it (--workers > 1)."""
    if args.workers > 1:
        writable_folder("--ray-storage", args.ray_storage)
    return RayOptions(
        workers=args.workers, gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
        ray_address=args.ray_address, max_failures=args.max_failures, storage_path=args.ray_storage,
    )


def writable_folder(flag: str, path: str) -> str:
    """A local folder Ray will create and write in, checked before anything is created:
    Ray fails on it only after the store and the runs exist (a PermissionError, exit 1,
    mlflow.db left behind). The folder need not exist: it is made and written in, then
    removed again (tracking.folders: tried, not asked, so root on a read-only filesystem
    is refused too). A URI (s3://...) is left to Ray."""
    from pipelines.tracking.folders import try_folder

    if "://" in path:
        return path
    wanted = Path(path).expanduser().absolute()
    existing = wanted
    while not existing.exists():  # the folder Ray would create it in (/ always exists)
        existing = existing.parent
    if not existing.is_dir():
        what = "it is a file" if existing == wanted else f"{existing} is a file, no folder can be made in it"
        raise ConfigError(f"{flag} {path} is invalid: {what}; give a writable folder")
    try:
        try_folder(wanted)
    except OSError as e:
        where = e.filename or existing
        raise ConfigError(f"{flag} {path} is invalid: {where} cannot be made or written in ({e.strerror or e}); "
                          "give a writable folder") from None
    return path


def add_sweep_parser(subparsers: Any, command: Any) -> argparse.ArgumentParser:
    """`gan-pipeline sweep` and its flags."""
    s = subparsers.add_parser(
        "sweep", help="sweep hyperparameters: Ray Tune + Optuna, nested MLflow runs",
        description="Sweep a search space (a YAML file, or a shipped one: gan-pipeline spaces) with "
        "Ray Tune + Optuna TPE and "
        "ASHA early stopping; one parent MLflow run with a nested child run per trial and a "
        "summary table, parameter plots and the best trials' samples. With no arguments: "
        "the shipped space quick on the embedded mnist-5k, a few minutes on a CPU.")
    s.add_argument("--space", default=DEFAULT_SPACE, metavar="FILE",
                   help="search space YAML (e.g. search_spaces/default.yaml or your own), or a shipped "
                   "space's name (gan-pipeline spaces; default: quick)")
    s.add_argument("--trials", type=int, default=None, metavar="N",
                   help="trials in all (default: the space's sweep.trials, else 10); with --resume NAME of a "
                   "finished sweep: extend it to N trials in all")
    s.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="trials at a time (default: the space's sweep.concurrency, else 1)")
    s.add_argument("--scheduler", default="asha", choices=SCHEDULERS,
                   help="asha: stop trials whose FID trails at a rung (default); none: run all; pbt / pb2: "
                   "population-based training of --trials members (PB2: new values from a GP bandit)")
    s.add_argument("--perturb-every", type=int, default=None, metavar="EPOCHS",
                   help="pbt/pb2: epochs between perturbations (default: the space's sweep.perturb_every, "
                   "else a quarter of its epochs)")
    s.add_argument("--grace-period", type=int, default=None, metavar="EVALS",
                   help="evals every trial gets before ASHA may stop it (default: the space's, else 1)")
    s.add_argument("--searcher", default="tpe", choices=SEARCHERS,
                   help="Optuna sampler (default: tpe, multivariate, seeded)")
    s.add_argument("--experiment", default=DEFAULT_EXPERIMENT, type=experiment_name,
                   help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    s.add_argument("--name", default=None, type=plain_name, help="sweep name: MLflow parent run and Ray folder "
                   "(default: sweep-SPACE-TIMESTAMP)")
    s.add_argument("--resume", nargs="?", const="latest", default=None, metavar="NAME", type=plain_name,
                   help="continue an interrupted sweep in its parent run (no NAME: the newest "
                   "unfinished one); its saved settings are used. A finished one with --trials N: N - done "
                   "more trials under the same parent, the searcher going on from every trial scored")
    s.add_argument("--warm-start", default=None, metavar="NAME", type=plain_name,
                   help="seed this new sweep's searcher with the scored trials of the earlier sweep NAME "
                   "(same experiment); refused if any falls outside this sweep's space")
    g = s.add_argument_group("resources")
    g.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                   help="N > 1: each trial trains data-parallel under Ray Train (default: 1, in-process)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C",
                   help="CPUs (torch threads) per trial, or per worker with --workers-per-trial (default: 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                   help="GPUs per trial; fractions share a GPU, e.g. 0.5 (default: 0)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray)")
    g.add_argument("--ray-storage", default=DEFAULT_STORAGE, metavar="PATH",
                   help=f"Tune state of the sweep, for --resume (default: {DEFAULT_STORAGE})")
    s.set_defaults(func=command)
    return s


def sweep_options(args: argparse.Namespace) -> SweepOptions:
    """`sweep`'s flags as SweepOptions (resolved and checked against the space later); the
    Tune state folder is checked here, before the driver opens the store."""
    writable_folder("--ray-storage", args.ray_storage)
    return SweepOptions(
        space=args.space, trials=args.trials, concurrency=args.concurrency, scheduler=args.scheduler,
        grace_period=args.grace_period, perturb_every=args.perturb_every, searcher=args.searcher,
        experiment=args.experiment, seed=args.seed, name=args.name, workers_per_trial=args.workers_per_trial,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        storage_path=args.ray_storage, ray_address=args.ray_address, warm_start=args.warm_start,
    )
