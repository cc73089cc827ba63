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

from gan.config import ARCHS, BACKBONES, LOSSES, NORMS, RunConfig, config_from_sources
from pipelines.ray_train import add_ray_flags
from pipelines.sweep import add_sweep_parser

FLAG_HELP = {
    "dataset": "mnist-5k (embedded, offline), mnist, fashion-mnist, cifar10, svhn, or folder:PATH",
    "data_dir": "where torchvision datasets are found or downloaded",
    "image_size": "resize images to this square size (0: the dataset's own; folders: 32)",
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
    from gan.config import ConfigError
    from pipelines.ray_train import options_from_args, run_distributed
    from pipelines.tracking import tracking_uri, ui_hint
    from pipelines.training import run_local

    cfg = _config(args)
    opts = options_from_args(args)
    if opts.workers > 1:
        if args.resume:
            raise ConfigError("--resume is invalid with --workers > 1: Ray Train restarts failed "
                              "workers itself (--max-failures); resume in-process with --workers 1")
        out = run_distributed(cfg, opts, experiment=args.experiment, run_name=args.run_name)
    else:  # in-process, no Ray; --gpu just means cuda
        cfg = dataclasses.replace(cfg, device="cuda") if opts.gpu else cfg
        out = run_local(cfg, experiment=args.experiment, run_name=args.run_name, resume=args.resume)
    r = out.result
    last = r.eval_history[-1][1] if r.eval_history else {}
    score = f", {cfg.backbone} FID {last['fid']:.2f}" if "fid" in last else ""
    print(f"finished run {out.run_id}: {r.epochs_done} epochs, {r.step} steps{score}")
    print(f"generator: {out.model_uri}")
    print(ui_hint(tracking_uri(), out.experiment_id, out.run_id))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from pipelines.registry import promote
    from pipelines.tracking import client_for

    if args.min_epochs < 0:
        raise _user_error(f"--min-epochs={args.min_epochs} is invalid: must be >= 0")
    result = promote(client_for(), sweep=args.sweep, experiment=None if args.sweep else args.experiment,
                     metric=args.metric, model_name=args.model_name, min_epochs=args.min_epochs, force=args.force)
    print(result.line(args.metric))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.registry import generate_images, write_images
    from pipelines.tracking import client_for

    if not 1 <= args.num_images <= 10_000:
        raise _user_error(f"-n={args.num_images} is invalid: must be in [1, 10000]")
    if not args.out and not args.out_dir:
        raise _user_error("nothing to write: give --out FILE and/or --out-dir DIR")
    client_for()  # sets the tracking URI that models:/ and runs:/ resolve against
    images = generate_images(args.model, args.num_images, args.seed)
    written = write_images(images, args.out, args.out_dir)
    shape = "x".join(str(d) for d in images.shape[1:])
    print(f"wrote {len(images)} images ({shape}, seed {args.seed}) from {args.model}: "
          + (str(written[0]) if args.out else "") + (f" {args.out_dir}/" if args.out_dir else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvalRequest, evaluate, log_scores, table
    from pipelines.tracking import client_for

    if args.num_samples < 10:
        raise _user_error(f"--num-samples={args.num_samples} is invalid: must be >= 10")
    client = client_for()
    req = EvalRequest(args.model, args.run_id, args.dataset, args.backbone, args.num_samples, args.seed,
                      args.data_dir)
    scores, run, dataset = evaluate(client, req)
    print(f"{args.model or 'run ' + args.run_id} vs {dataset} ({args.backbone}, {args.num_samples} samples)")
    print(table(scores))
    if args.log:
        if run is None:
            raise _user_error("--log needs a source run: use --run-id or a runs:/ or registered models:/ URI")
        log_scores(client, run, args.backbone, scores)
        print(f"logged to run {run.info.run_id} as eval_{args.backbone}_*")
    return 0


def _user_error(message: str) -> Exception:
    from gan.config import ConfigError

    return ConfigError(message)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gan-pipeline",
        description="Train GANs on images, sweep them with Ray Tune + Optuna, track everything in MLflow. "
        "Tracking store: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train one GAN and record it as one MLflow run",
                       description="Train one GAN in this process (or data-parallel over "
                       "--workers N Ray Train workers) and record it as one MLflow run: "
                       "params, per-step losses, sample grids, checkpoints, progress GIF, generator model.")
    t.add_argument("--config", metavar="FILE", help="YAML file of config values (flags override it)")
    _add_config_flags(t)
    t.add_argument("--experiment", default="gan-pipelines", help="MLflow experiment name (default: gan-pipelines)")
    t.add_argument("--run-name", default=None, help="MLflow run name (default: generated)")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_ID",
                   help="continue a killed run from its last checkpoint, in the same MLflow run "
                   "(no RUN_ID: the newest unfinished run of the experiment); uses that run's config")
    add_ray_flags(t)
    t.set_defaults(func=cmd_train)
    add_sweep_parser(sub)

    pr = sub.add_parser("promote", help="register the best finished run's generator; move alias champion if better",
                        description="Find the best finished trial of a sweep (or run of an experiment) by its best "
                        "logged value of --metric, register its generator as a new model version tagged with where "
                        "it came from, and move the alias 'champion' to it only if it is strictly better than the "
                        "current champion on the same dataset and backbone (or with --force).")
    where = pr.add_mutually_exclusive_group()
    where.add_argument("--sweep", metavar="NAME_OR_PARENT_RUN_ID", help="a sweep's name or its parent run id")
    where.add_argument("--experiment", default="gan-pipelines",
                       help="consider every finished run of this experiment (default: gan-pipelines)")
    pr.add_argument("--metric", default="fid", help="metric to rank by; lower is better except "
                    "precision/recall/density/coverage/inception_score (default: fid)")
    pr.add_argument("--model-name", default="gan-generator", help="registered model name (default: gan-generator)")
    pr.add_argument("--min-epochs", type=int, default=0, metavar="K", help="ignore runs with fewer epochs")
    pr.add_argument("--force", action="store_true", help="move champion even if not better")
    pr.set_defaults(func=cmd_promote)

    g = sub.add_parser("generate", help="write images from a generator model",
                       description="Write a grid (and optionally one PNG per image) from any generator model URI; "
                       "the same seed gives the same images.")
    g.add_argument("--model", default="models:/gan-generator@champion",
                   help="model URI: models:/NAME@champion, models:/NAME/3, runs:/RUN_ID/generator "
                   "(default: models:/gan-generator@champion)")
    g.add_argument("-n", "--num-images", type=int, default=64, help="how many images (default: 64)")
    g.add_argument("--seed", type=int, default=0, help="latent seed (default: 0)")
    g.add_argument("--out", default="grid.png", help="grid PNG path (default: grid.png; '' for none)")
    g.add_argument("--out-dir", default=None, metavar="DIR", help="also write one PNG per image here")
    g.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="FID-style scores of a generator against a dataset",
                        description="Generate --num-samples images from a logged generator and score them "
                        "(fid, kid, precision, recall, density, coverage, inception score) against the real "
                        "dataset; dataset and image size default to what the source run trained on.")
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model URI: models:/NAME@champion, runs:/RUN_ID/generator, ...")
    which.add_argument("--run-id", help="a training run: scores its generator")
    ev.add_argument("--dataset", default=None, help="dataset to score against (default: the run's)")
    ev.add_argument("--data-dir", default=None, help="where torchvision datasets live (default: the run's)")
    ev.add_argument("--backbone", default="classifier", choices=BACKBONES,
                    help="feature network (default: classifier)")
    ev.add_argument("--num-samples", type=int, default=1000, help="generated images (default: 1000)")
    ev.add_argument("--seed", type=int, default=0, help="latent seed (default: 0)")
    ev.add_argument("--log", action="store_true", help="log the scores to the source run as eval_<backbone>_*")
    ev.set_defaults(func=cmd_evaluate)
    return parser


def _quiet() -> None:
    # MLflow configures its loggers when first imported: tell it via the environment.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
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
    from gan.metrics import MetricError
    from pipelines.tracking import TrackingError

    return (ConfigError, DataError, TrackingError, MetricError)


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
