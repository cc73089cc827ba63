"""The `gan-pipeline` command line. Every RunConfig field is a flag (defaults from the
config, overridden by --config YAML, overridden by flags); user errors print one line
and exit 2, never a traceback (set GAN_PIPELINES_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from gan.config import ARCHS, BACKBONES, LOSSES, RunConfig, config_from_sources

FLAG_HELP = {
    "dataset": "mnist-5k (embedded, offline), mnist, fashion-mnist, cifar10, svhn, or folder:PATH",
    "data_dir": "where torchvision datasets are found or downloaded",
    "image_size": "resize images to this square size (0: the dataset's own; folders: 32)",
    "arch": "model family: " + ", ".join(ARCHS),
    "latent_dim": "size of the latent vector z",
    "dcgan_width": "DCGAN channels next to the image (doubles per level inward)",
    "mlp_width": "MLP width: G hidden sizes w-2w-4w-8w, D 4w-2w (128 = the tutorial)",
    "spectral_norm": "spectral norm on D's layers (replaces D's BatchNorm in dcgan)",
    "epochs": "passes over the dataset",
    "batch_size": "global batch size (split evenly over workers)",
    "lr_g": "Adam learning rate of G",
    "lr_d": "Adam learning rate of D",
    "beta1": "Adam beta1 of both networks, in [0, 1)",
    "beta2": "Adam beta2 of both networks, in [0, 1)",
    "label_smoothing": "one-sided smoothing s: D's real target is 1 - s, in [0, 0.5)",
    "loss": "GAN loss: " + ", ".join(LOSSES),
    "n_dis": "D steps per G step",
    "ema": "EMA decay of G's weights for sampling/eval (0 = off, e.g. 0.999)",
    "seed": "random seed: same config + seed = same losses on CPU",
    "eval_every": "epochs between sample grids and FID-style evals",
    "checkpoint_every": "epochs between full-state checkpoints",
    "log_every": "steps between batched metric writes",
    "backbone": "feature network of the FID-style metrics: " + ", ".join(BACKBONES),
    "eval_samples": "generated images per evaluation",
    "device": "auto (cuda if present), cpu, cuda or cuda:N",
    "amp": "mixed precision on CUDA (bf16 where supported, else fp16)",
    "sync_bn": "SyncBatchNorm across DDP workers instead of per-worker statistics",
}
assert set(FLAG_HELP) == {f.name for f in dataclasses.fields(RunConfig)}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (its default prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        helptext = f"{FLAG_HELP[f.name]} (default: {default})"
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            p.add_argument(flag, dest=f.name, type=type(default), default=None, metavar=f.name.upper(), help=helptext)


def _config(args: argparse.Namespace) -> RunConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    return config_from_sources(args.config, overrides)


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.training import run_local
    from pipelines.tracking import tracking_uri

    cfg = _config(args)
    out = run_local(cfg, experiment=args.experiment, run_name=args.run_name, resume=args.resume)
    r = out.result
    last = r.eval_history[-1][1] if r.eval_history else {}
    score = f", {cfg.backbone} FID {last['fid']:.2f}" if "fid" in last else ""
    print(f"finished run {out.run_id}: {r.epochs_done} epochs, {r.step} steps{score}")
    print(f"generator: {out.model_uri}")
    print(_ui_hint(tracking_uri(), out.experiment_id, out.run_id))
    return 0


def _ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    url = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith("sqlite:"):
        return f"open it: mlflow ui --backend-store-uri {uri} --port 5000   then {url}"
    return f"open it: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gan-pipeline",
        description="Train GANs on images, sweep them with Ray Tune + Optuna, track everything in MLflow. "
        "Tracking store: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train one GAN and record it as one MLflow run",
                       description="Train one GAN in this process and record it as one MLflow run: "
                       "params, per-step losses, sample grids, checkpoints, progress GIF, generator model.")
    t.add_argument("--config", metavar="FILE", help="YAML file of config values (flags override it)")
    _add_config_flags(t)
    t.add_argument("--experiment", default="gan-pipelines", help="MLflow experiment name (default: gan-pipelines)")
    t.add_argument("--run-name", default=None, help="MLflow run name (default: generated)")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_ID",
                   help="continue a killed run from its last checkpoint, in the same MLflow run "
                   "(no RUN_ID: the newest unfinished run of the experiment); uses that run's config")
    t.set_defaults(func=cmd_train)
    return parser


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is already a one-line explanation for the user."""
    from gan.config import ConfigError
    from gan.data import DataError
    from pipelines.tracking import TrackingError

    errors: list[type[BaseException]] = [ConfigError, DataError, TrackingError]
    try:
        from gan.metrics import MetricError

        errors.append(MetricError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet()
    return _run(args.func, args)


def _run(func: Callable[[argparse.Namespace], int], args: Any) -> int:
    debug = bool(os.environ.get("GAN_PIPELINES_DEBUG"))
    try:
        return func(args)
    except user_errors() as e:
        if debug:
            raise
        print(f"gan-pipeline {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gan-pipeline {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user, the run is already marked
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"gan-pipeline {args.command}: failed: {type(e).__name__}: {first} "
              "(GAN_PIPELINES_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
