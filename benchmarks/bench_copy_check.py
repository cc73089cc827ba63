"""The copy check (gan.metrics.copies) on mnist-5k: a verbatim copier, held-out real digits,
a random generator and GANs trained at `gan-pipeline train`'s defaults.

    python benchmarks/bench_copy_check.py --seeds 0 1 2 --out copy_check.md

What each arm scores, through the classifier backbone, with 1000 samples (the default
eval_samples):
- copier: gan.metrics.copies.CopyingGenerator over the 5,000 training digits, scored by
  the Evaluator a run uses (its reference: all 5,000).
- held-out: 1,000 real digits the "training set" never saw: the reference is the other
  4,000 (an Evaluator's reference is the whole dataset, so this arm is at feature level).
- random: an untrained default DCGAN.
- trained: `train()` with the default config (5 epochs, batch 64, DCGAN, eval budget
  5%) and one seed per --seeds; the best generator's scores, as its LoggedModel holds.
In-process, gan/ API only (no MLflow, no Ray).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from gan.config import make_config
from gan.data import load_dataset
from gan.metrics import Evaluator
from gan.metrics.copies import CopyingGenerator, TrainingReference, copy_scores, training_reference
from gan.metrics.engine import clear_memory_cache
from gan.models import build_models
from gan.train import train


def upscale(panel, factor: int = 3):  # the run page's panels are upscaled the same way
    return panel.repeat(factor, axis=0).repeat(factor, axis=1)


def row(name: str, scores: dict[str, float], note: str = "") -> str:
    fid = f"{scores['fid']:.2f}" if "fid" in scores else "-"
    return f"| {name} | {scores['copy_share']:.3f} | {scores['copy_ratio']:.3f} | {fid} | {note} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--cache", default=None, help="cache folder (default: the product's)")
    ap.add_argument("--out", default=None, help="also write the table here")
    ap.add_argument("--panels", default=None, metavar="DIR",
                    help="write the copy-check panels of the copier and of each trained GAN's last generator here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    data = load_dataset("mnist-5k")
    started = time.perf_counter()
    evaluator = Evaluator(data, num_samples=args.samples, cache_dir=args.cache)
    built = time.perf_counter() - started
    clear_memory_cache()
    with tempfile.TemporaryDirectory() as cold:  # the reference as a first run builds it
        started = time.perf_counter()
        training_reference(data, evaluator.extractor, cold)
        cold_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(10):
        copy_scores(evaluator.reference, evaluator.real.feats)
    check_s = (time.perf_counter() - started) / 10
    lines = [f"Evaluator (backbone, real statistics, copy-check reference of {len(evaluator.reference)} "
             f"images) built in {built:.1f} s; the reference alone, cold: {cold_s:.1f} s; "
             f"the copy check of {args.samples} samples: {check_s * 1000:.0f} ms",
             "", "| generator | copy_share | copy_ratio (median) | fid | note |", "|---|---|---|---|---|"]

    panels = Path(args.panels) if args.panels else None
    if panels:
        panels.mkdir(parents=True, exist_ok=True)
        Image.fromarray(upscale(evaluator.copy_panel(CopyingGenerator(data.images), 100))).save(panels / "copier.png")
    started = time.perf_counter()
    copier = evaluator(CopyingGenerator(data.images), latent_dim=100)
    lines.append(row("copier (training images verbatim)", copier,
                     f"one eval, copy check included: {time.perf_counter() - started:.2f} s"))

    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    seen, unseen = perm[:4000], perm[4000:]
    ref = evaluator.reference
    started = time.perf_counter()
    held_out = copy_scores(TrainingReference.of(ref.feats[seen], seen), ref.feats[unseen])
    lines.append(row("held-out real (1,000 vs the other 4,000)", held_out,
                     f"copy check alone: {time.perf_counter() - started:.2f} s"))

    torch.manual_seed(0)
    untrained, _ = build_models(make_config({}), data.shape)
    lines.append(row("random (untrained DCGAN)", evaluator(untrained.eval(), latent_dim=100)))

    for seed in args.seeds:
        cfg = make_config({"seed": seed, "device": "cpu"})  # `gan-pipeline train`'s defaults otherwise
        started = time.perf_counter()
        result = train(cfg, data, evaluator=evaluator)
        took = time.perf_counter() - started
        if panels:
            panel = evaluator.copy_panel(result.generator, cfg.latent_dim)
            Image.fromarray(upscale(panel)).save(panels / f"trained_seed{seed}.png")
        scored = [(step, s) for step, s in result.eval_history if math.isfinite(s.get("fid", math.nan))]
        step, best = min(scored, key=lambda e: e[1]["fid"])
        lines.append(row(f"trained, seed {seed}", best,
                         f"best of {len(scored)} evals (step {step}); training {took:.0f} s"))
        print(lines[-1], flush=True)

    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
