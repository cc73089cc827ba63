"""`gan-pipeline data prepare SOURCE`: decode and resize a dataset once, into a prepared
dataset every run reads (gan/prepare.py does the work; this is its flags and its report)."""

from __future__ import annotations

import argparse
from typing import Any

from gan.config import BUILTIN_DATASETS, CHECKS, ConfigError

SOURCES = ", ".join(BUILTIN_DATASETS) + " or folder:PATH (a local path, or a URI: s3://, gs://, file://...)"


def add_data_parser(subparsers: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    d = subparsers.add_parser("data", help="prepare a dataset once: decoded, resized, kept for every run",
                              description="Datasets prepared once. `data prepare SOURCE` decodes a folder of "
                              "images (or a built-in dataset) one image at a time, resizes it and keeps it as "
                              "uint8 shards with a manifest (count, shape, mode, a content digest); runs then "
                              "read that instead of decoding again.")
    d.set_defaults(func=_no_action)
    actions = d.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class)
    p = actions.add_parser(
        "prepare", help="prepare SOURCE at --image-size, or find the copy prepared before",
        description="Prepare SOURCE (" + SOURCES + ") at --image-size: each image decoded once (JPEGs at "
        "a reduced scale where that keeps 4x the target size), centre-cropped to a square, resized bicubic "
        "and written as uint8 .npy shards (labels beside them where the dataset has them) with manifest.json. "
        "The copy goes to DIR/prepared/NAME-SIZEpx-KEY, KEY naming the source (a folder: its path and its "
        "files' names, sizes and times) and the size: run again on an unchanged source, it is found and "
        "reused without decoding anything; `train --dataset folder:PATH` finds it too. Train on it with "
        "--dataset prepared:PATH. A bad image file, an empty folder, or gray and colour images mixed: one "
        "line naming it, exit 2, nothing created.")
    p.add_argument("source", metavar="SOURCE", help=f"what to prepare: {SOURCES}")
    p.add_argument("--image-size", type=int, default=0, metavar="PX",
                   help="side of the square images, 8 to 256 (default: 0, the dataset's own; folders: 32)")
    p.add_argument("--data-dir", default="./data", metavar="DIR",
                   help="where built-in datasets are found or downloaded and prepared copies kept, in "
                   "DIR/prepared (default: ./data, as train's)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="put the prepared dataset in DIR instead (a new or empty folder, or this same "
                   "dataset prepared there before)")
    p.add_argument("--parallel", action="store_true",
                   help="decode a folder on Ray Data tasks: every core of a local Ray, or every node of the "
                   "cluster at --ray-address (the folder and --data-dir/--out on a filesystem every node sees)")
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="with --parallel: the Ray cluster to use (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out files that are no readable image (listed in the manifest, counted here) "
                   "instead of stopping at the first")
    p.set_defaults(func=cmd_data_prepare)


def _no_action(args: argparse.Namespace) -> int:
    raise ConfigError("data needs an action: prepare (gan-pipeline data prepare --help)")


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from gan.prepare import prepare_dataset
    from gan.prepared_writer import tqdm_progress

    allowed = CHECKS["image_size"](args.image_size)
    if allowed is not None:
        raise ConfigError(f"--image-size {args.image_size} is invalid: must be {allowed}")
    for flag, value in (("--data-dir", args.data_dir), ("--out", args.out)):
        if value is not None and not value.strip():
            raise ConfigError(f"{flag} {value!r} is invalid: must be a folder path")
    if args.ray_address is not None and not args.parallel:
        raise ConfigError("--ray-address is for --parallel: add --parallel, or drop --ray-address")
    runner = None
    if args.parallel:
        from pipelines.distributed.connect import check_reachable, ray_address
        from pipelines.distributed.prepare_on_ray import ray_runner

        address = ray_address(args.ray_address)
        check_reachable(address)  # an address nothing answers at: one line now, not minutes of retries
        runner = ray_runner(address)
    # --parallel: Ray Data's bar counts the chunks (this one would stand still between them)
    with tqdm_progress(f"preparing {args.source}", show=False if args.parallel else None) as progress:
        prepared = prepare_dataset(args.source, args.image_size, args.data_dir, out=args.out,
                                   skip_bad=args.skip_bad, progress=progress, runner=runner)
    m = prepared.manifest
    c, h, w = m.shape
    print(f"prepared dataset: {m.path} ({'reused: prepared before' if prepared.reused else 'made now'})")
    print(f"{m.count} images, {c}x{h}x{w} ({m.mode}), {'labelled' if m.has_labels else 'no labels'}; "
          f"digest sha256:{m.digest}")
    if m.skipped:
        print(f"skipped {len(m.skipped)} bad file{'s' * (len(m.skipped) != 1)} (listed in its manifest.json)")
    print(f"train on it: gan-pipeline train --dataset prepared:{m.path}")
    return 0
