"""The `gan-pipeline` argument parser: one sub-command per job, each with --help. The
only place (with flags.py) that knows argparse."""

from __future__ import annotations

import argparse
from typing import NoReturn

from gan.config import BACKBONES
from pipelines.cli import commands
from pipelines.cli.data_command import add_data_parser
from pipelines.cli.flags import (
    add_config_flags,
    add_ray_flags,
    add_sweep_parser,
    experiment_name,
    plain_name,
    source_ref,
)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (its default prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


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
    add_config_flags(t)
    t.add_argument("--experiment", default="gan-pipelines", type=experiment_name,
                   help="MLflow experiment name (default: gan-pipelines)")
    t.add_argument("--run-name", default=None, help="MLflow run name (default: generated)")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_ID", type=plain_name,
                   help="continue a killed run from its last checkpoint, in the same MLflow run "
                   "(no RUN_ID: the newest unfinished run of the experiment); uses that run's config")
    t.add_argument("--from", dest="from_run", default=None, metavar="RUN_ID|MODEL_URI", type=source_ref,
                   help="start a NEW run from another run's resolved config.yaml (a sweep trial's or any "
                   "training run's id, or models:/<model_id>, models:/NAME/VERSION, models:/NAME@alias: the "
                   "model's source run); flags given override it; tagged from_run_id, described with a link")
    t.add_argument("--warm", action="store_true",
                   help="with --from: start from that run's best checkpoint (G, D, EMA and optimizer states: "
                   "a fine-tune, tagged warm_start_from) instead of from scratch; --epochs is the new run's own")
    add_ray_flags(t)
    t.set_defaults(func=commands.cmd_train)
    add_sweep_parser(sub, commands.cmd_sweep)
    sp = sub.add_parser("spaces", help="list the search spaces that ship with the package",
                        description="List the shipped search spaces (name, default trials, description): "
                        "the files in search_spaces/, installed with the package; pass a name to "
                        "`gan-pipeline sweep --space NAME` from any folder, or copy a file to write your own.")
    sp.set_defaults(func=commands.cmd_spaces)

    co = sub.add_parser("confirm", help="train a sweep's top trials again with new seeds; mean +- std per config",
                        description="Is the sweep's winner real? Train the configs of its --top finished trials "
                        "(by best_fid) again with --seeds new seeds each, on the sweep's Ray with its resources "
                        "and budget, scored after the epochs their trial was scored after, nested under its parent "
                        "run (tags confirm_of, confirm_seed). Logs per config the mean and standard deviation of "
                        "best_fid over its confirmation seeds (never the trial's own score, which picked it; seeds "
                        "never repeat, and a second confirm adds to the first) on the trial and a table and plot on "
                        "the parent; `promote --sweep` then ranks by that mean. A population sweep (pbt, pb2) "
                        "cannot be confirmed.")
    co.add_argument("--sweep", required=True, metavar="NAME_OR_PARENT_RUN_ID", type=plain_name,
                    help="a finished sweep's name or its parent run id")
    co.add_argument("--top", type=int, default=3, metavar="K", help="how many of its best trials (default: 3)")
    co.add_argument("--seeds", type=int, default=3, metavar="S", help="new seeds per config (default: 3)")
    co.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="the Ray cluster to train on (default: $RAY_ADDRESS, else a local Ray)")
    co.set_defaults(func=commands.cmd_confirm)

    pr = sub.add_parser("promote", help="register the best generator; move alias champion if better",
                        description="Rank the generator models (MLflow LoggedModels: each run's best and final) "
                        "of a sweep's finished trials (or an experiment's finished runs) by the value of --metric "
                        "logged for each model, register the best as a new model version tagged with its score "
                        "and where it came from, and move the alias 'champion' to it only if it is strictly "
                        "better than the current champion scored the same way (or with --force). Only models "
                        "scored alike compete: narrow a mixed experiment with the filters below.")
    where = pr.add_mutually_exclusive_group()
    where.add_argument("--sweep", metavar="NAME_OR_PARENT_RUN_ID", type=plain_name,
                       help="a sweep's name or its parent run id")
    where.add_argument("--experiment", default="gan-pipelines", type=experiment_name,
                       help="consider every finished run of this experiment (default: gan-pipelines)")
    pr.add_argument("--metric", default="fid", help="metric to rank by; lower is better except "
                    "precision/recall/density/coverage/inception_score (default: fid)")
    pr.add_argument("--model-name", default="gan-generator", help="registered model name (default: gan-generator)")
    pr.add_argument("--min-epochs", type=int, default=0, metavar="K", help="ignore runs with fewer epochs")
    pr.add_argument("--force", action="store_true", help="move champion even if not better")
    pr.add_argument("--max-copy", type=float, default=None, metavar="SHARE",
                    help="refuse (registering nothing) a best model whose copy_share is above SHARE in [0, 1]: "
                    "the share of its samples closer to a training image than training images are to each "
                    "other (held-out real images ~0.45, a verbatim copier 1.0; promote's line says "
                    "'looks like a copier' above 0.75). Default: no refusal")
    f = pr.add_argument_group("filters (scores compare only on the same data, backbone and sample count)")
    f.add_argument("--dataset", default=None, help="only models trained on this dataset")
    f.add_argument("--image-size", type=int, default=None, metavar="PX", help="only models of this image size")
    f.add_argument("--backbone", default=None, choices=BACKBONES, help="only models scored with this backbone")
    f.add_argument("--eval-samples", type=int, default=None, metavar="N",
                   help="only models scored on N generated images")
    pr.set_defaults(func=commands.cmd_promote)

    g = sub.add_parser("generate", help="write images from a generator model",
                       description="Write a grid (and optionally one PNG per image) from any generator model URI; "
                       "the same seed gives the same images, the ones training scored at that seed. The model "
                       "also serves on its own, where gan-pipelines is not installed: `mlflow models serve -m "
                       "MODEL --env-manager local -h 127.0.0.1 -p 5001` answers POST /invocations with "
                       '{"dataframe_records": [{"seed": 0, "num_images": 4}]} by base64 PNGs (params '
                       '{"format": "array"}: uint8 [N, C, H, W]); in Python, mlflow.pyfunc.load_model(MODEL)'
                       ".predict(pandas.DataFrame(), params={...})."
                       " See docs/registry-and-serving.md.")
    g.add_argument("--model", default="models:/gan-generator@champion",
                   help="model URI: models:/NAME@champion, models:/NAME/3, runs:/RUN_ID/generator "
                   "(default: models:/gan-generator@champion)")
    g.add_argument("-n", "--num-images", type=int, default=64, help="how many images (default: 64)")
    g.add_argument("--seed", type=int, default=0, help="latent seed (default: 0)")
    g.add_argument("--out", default="grid.png", help="grid PNG path (default: grid.png; '' for none)")
    g.add_argument("--out-dir", default=None, metavar="DIR", help="also write one PNG per image here")
    g.set_defaults(func=commands.cmd_generate)

    ev = sub.add_parser("evaluate", help="FID-style scores of a generator against a dataset",
                        description="Generate --num-samples images from a logged generator and score them "
                        "(fid, kid, precision, recall, density, coverage, inception score) against the real "
                        "dataset. Every setting left out is the one training scored this model with (dataset, "
                        "image size, backbone, sample count, seed), so the scores reproduce the logged ones, "
                        "which are printed beside them.")
    which = ev.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model URI: models:/NAME@champion, runs:/RUN_ID/generator, ...")
    which.add_argument("--run-id", help="a training run: scores its generator")
    ev.add_argument("--dataset", default=None, help="dataset to score against (default: the run's)")
    ev.add_argument("--data-dir", default=None, help="where torchvision datasets live (default: the run's)")
    ev.add_argument("--backbone", default=None, choices=BACKBONES,
                    help="feature network (default: the model's, else classifier)")
    ev.add_argument("--num-samples", type=int, default=None,
                    help="generated images (default: the model's eval sample count, else 1000)")
    ev.add_argument("--seed", type=int, default=None, help="latent seed (default: the run's seed, else 0)")
    ev.add_argument("--log", action="store_true", help="log the scores to the source run as eval_<backbone>_*")
    ev.set_defaults(func=commands.cmd_evaluate)
    add_data_parser(sub, _Parser)
    return parser


