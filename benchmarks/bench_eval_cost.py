"""What periodic evaluation costs, as a share of training time: every epoch (the old
default, --eval-budget 0) against the default eval budget (5%), for mlp and dcgan on
mnist-5k (classifier backbone) and on a folder of 32x32 RGB images (Inception: a folder
has no labels for the classifier), default sample count (1000).

    python benchmarks/bench_eval_cost.py                 # ~10 min on 2 cores
    python benchmarks/bench_eval_cost.py --quick         # seconds: tiny sizes

For each case: one epoch's training seconds, one eval's seconds (their ratio is what
scoring every epoch costs), then a run with the default budget: which epochs scored,
and the scoring time of its periodic evals (the cost estimate included; the last
epoch's score, which every run has, apart) over its training time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.data import load_dataset
from gan.metrics import Evaluator
from gan.train import train


class Epochs(Callbacks):
    def __init__(self) -> None:
        self.scored: list[int] = []

    def on_eval(self, epoch, step, grid, metrics) -> None:
        self.scored.append(epoch)


class Timed:
    """The evaluator, its calls timed (the cost estimate passes through, timed apart)."""

    def __init__(self, inner: Evaluator) -> None:
        self.inner, self.calls, self.estimates = inner, [], []

    def __call__(self, generator, latent_dim):
        t = time.perf_counter()
        out = self.inner(generator, latent_dim)
        self.calls.append(time.perf_counter() - t)
        return out

    def estimate_seconds(self, generator, latent_dim):
        t = time.perf_counter()
        out = self.inner.estimate_seconds(generator, latent_dim)
        self.estimates.append(time.perf_counter() - t)
        return out


def write_rgb_folder(folder: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """n smooth random RGB images (low-frequency noise upsampled): photo-like statistics
    without a download."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        Image.fromarray(np.asarray(img)).save(folder / f"{i:05d}.png")
    return folder


def case(name: str, dataset: str, backbone: str, arch: str, epochs: int, samples: int, width: int) -> dict:
    base = {"dataset": dataset, "arch": arch, "backbone": backbone, "device": "cpu", "eval_samples": samples,
            **({f"{arch}_width": width} if width else {})}
    cfg = make_config(base)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
    ev = Timed(Evaluator(data, backbone=backbone, num_samples=samples, device=torch.device("cpu")))
    # every epoch scored, 2 epochs: one epoch's training time and one eval's
    every = train(make_config({**base, "epochs": 2, "eval_budget": 0}), data, evaluator=ev)
    epoch_s, eval_s = every.seconds["train_s"] / 2, sum(ev.calls) / len(ev.calls)
    # the default budget, `epochs` epochs
    ev.calls, ev.estimates = [], []
    seen = Epochs()
    t = time.perf_counter()
    run = train(make_config({**base, "epochs": epochs}), data, seen, evaluator=ev)
    wall = time.perf_counter() - t
    periodic = sum(ev.calls[:-1]) + sum(ev.estimates)
    row = {
        "case": name, "epochs": epochs, "epoch_s": round(epoch_s, 2), "eval_s": round(eval_s, 2),
        "every_epoch_share": round(eval_s / epoch_s, 3),
        "budget_scored_epochs": seen.scored, "budget_periodic_s": round(periodic, 2),
        "budget_periodic_share": round(periodic / run.seconds["train_s"], 3),
        "budget_final_eval_s": round(ev.calls[-1], 2), "budget_wall_s": round(wall, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(2)
    samples, epochs, n_rgb = (50, 2, 200) if args.quick else (1000, args.epochs, 5000)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        folder = write_rgb_folder(Path(tmp) / "rgb32", n_rgb)
        rows = []
        for arch in ("mlp", "dcgan"):
            width = 8 if args.quick else 0  # 0: the default width
            rows.append(case(f"{arch} mnist-5k classifier", "mnist-5k", "classifier", arch, epochs, samples, width))
            rows.append(case(f"{arch} rgb32 folder inception", f"folder:{folder}", "inception", arch,
                             epochs, samples, width))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
