"""PBT and PB2 against TPE + ASHA at equal compute: the best FID each finds, over seeds.

    python benchmarks/bench_population.py                    # quick + rgb32, 3 seeds, 3 methods (~1 h 20 min, 2 cores)
    python benchmarks/bench_population.py --spaces quick --seeds 1

Each cell runs `gan-pipeline sweep` in a fresh folder (own sqlite store, own local Ray)
and reads the sweep's runs back:

  best_fid   the lowest best_fid of any run of the sweep (what `promote` would rank first)
  epochs     member- or trial-epochs trained, summed over the runs (the compute spent)
  wall_s     the whole command

Methods, at equal compute (a population of P members trains P x E epochs; ASHA's trial
count is set so that its pruned trials add up to about as many, and the measured epochs
are printed next to each score):

  tpe+asha   the product's default: Optuna TPE, ASHA after each eval (reduction 2)
  pbt        --scheduler pbt, P members, perturbed every E/4 epochs (the default)
  pb2        --scheduler pb2, the same population and schedule

Spaces: `quick` (the shipped space, mnist-5k, 4 epochs; 8 members against 14 ASHA trials)
and `rgb32`, a 32x32 RGB folder written here (1000 smooth random images, no download),
DCGAN, 3 epochs, scored with the Inception backbone of the fid-helper wheel on 50 samples
(0.13 s an image on this CPU, so a small budget: a population of 4 against 6 ASHA
trials; FID on 50 samples is a coarse score, compared here only within this table).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from pathlib import Path

import numpy as np
from sweep_cell import run_sweep

RGB_SPACE = """\
description: bench_population 32x32 RGB folder
sweep: {{trials: 8, concurrency: 2, grace_period: 1}}
params:
  dataset: folder:{folder}
  image_size: 32
  backbone: inception
  epochs: 3
  eval_every: 1
  eval_samples: 50
  latent_dim: 32
  device: cpu
  arch: dcgan
  dcgan_width: 8
  batch_size: 64
  lr_g: {{type: float, low: 5.0e-5, high: 3.0e-3, log: true}}
  lr_d: {{type: float, low: 5.0e-5, high: 3.0e-3, log: true}}
  beta1: {{type: float, low: 0.0, high: 0.9}}
  label_smoothing: {{type: categorical, choices: [0.0, 0.1]}}
  loss: {{type: categorical, choices: [bce, hinge]}}
"""


# (population members, ASHA trials): about the same epochs trained (printed per cell)
BUDGET = {"quick": (8, 14), "rgb32": (4, 6)}


def write_rgb_folder(folder: Path, n: int = 1000, size: int = 32, seed: int = 0) -> Path:
    """n smooth random RGB images (low-frequency noise upsampled): photo-like statistics
    without a download (as bench_eval_cost.py)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize((size, size), Image.BICUBIC).save(folder / f"{i:05d}.png")
    return folder


def run(folder: Path, space: str, method: str, seed: int, members: int, asha_trials: int) -> dict:
    how = (["--scheduler", method, "--trials", str(members)] if method in ("pbt", "pb2")
           else ["--scheduler", "asha", "--trials", str(asha_trials), "--concurrency", "2"])
    wall, runs = run_sweep(folder, ["--space", space, *how, "--seed", str(seed)], f"{method} seed {seed}")
    best = min((r.data.metrics.get("best_fid", math.inf) for r in runs), default=math.inf)
    epochs = sum(int(r.data.metrics.get("epoch", 0)) for r in runs)  # the last eval's epoch: what it trained
    exploits = sum(int(r.data.tags.get("pbt.exploits", 0)) for r in runs)
    return {"method": method, "seed": seed, "best_fid": best, "epochs": epochs, "runs": len(runs),
            "exploits": exploits, "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spaces", nargs="+", default=["quick", "rgb32"])
    ap.add_argument("--methods", nargs="+", default=["tpe+asha", "pbt", "pb2"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pop-") as tmp:
        root = Path(tmp)
        for name in args.spaces:
            space = name
            if name == "rgb32":
                images = write_rgb_folder(root / "rgb32")
                space = str(root / "rgb32.yaml")
                Path(space).write_text(RGB_SPACE.format(folder=images))
            for method in args.methods:
                for seed in range(args.seeds):
                    members, asha_trials = BUDGET[name]
                    row = {"space": name, **run(root / f"{name}-{method}-{seed}", space, method, seed,
                                                members, asha_trials)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| space | method | best FID per seed | mean | epochs trained (mean) | exploits | wall s (mean) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.spaces:
        for method in args.methods:
            cell = [r for r in rows if r["space"] == name and r["method"] == method]
            fids = [r["best_fid"] for r in cell]
            mean = {k: statistics.mean(r[k] for r in cell) for k in ("epochs", "exploits", "wall_s")}
            print(f"| {name} | {method} | {', '.join(f'{f:.2f}' for f in fids)} | {statistics.mean(fids):.2f} | "
                  f"{mean['epochs']:.0f} | {mean['exploits']:.1f} | {mean['wall_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
