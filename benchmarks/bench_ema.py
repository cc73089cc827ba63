"""EMA (warmed up, gan.ema) vs no EMA: a short DCGAN run on mnist-5k, both scored at the same steps.

    python benchmarks/bench_ema.py --seeds 0 1 2 --epochs 5 --ema 0.999

`--ema 0.999` and `--ema 0` train G identically (same seed: same init, data order and
latents; the EMA copy draws no random numbers; tests/test_ema.py checks it), so one run
per seed is both arms: at each epoch's checkpoint the raw G (what `--ema 0` samples
and ships) and the EMA G (what `--ema 0.999` does) are scored on the same latents,
with the classifier backbone every epoch and the FID Inception after the last one
(few samples: CPU). In-process, gan/ API only (no MLflow, no Ray).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.data import load_dataset
from gan.metrics import Evaluator
from gan.models import build_models
from gan.train import train


class ScoreBoth(Callbacks):
    """Loads the checkpoint's G and G_ema into eval-mode copies and scores each."""

    def __init__(self, cfg: Any, shape: tuple[int, int, int], classifier: Evaluator,
                 inception: Evaluator | None) -> None:
        self.cfg, self.classifier, self.inception = cfg, classifier, inception
        self.raw, self.ema = (build_models(cfg, shape)[0].eval() for _ in range(2))
        self.rows: list[tuple[int, int, dict[str, float]]] = []

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        self.raw.load_state_dict(state["G"])
        self.ema.load_state_dict(state["G_ema"])
        row = {"raw": self.classifier(self.raw, self.cfg.latent_dim)["fid"],
               "ema": self.classifier(self.ema, self.cfg.latent_dim)["fid"]}
        if self.inception is not None and epoch == self.cfg.epochs:
            row["raw_inception"] = self.inception(self.raw, self.cfg.latent_dim)["fid"]
            row["ema_inception"] = self.inception(self.ema, self.cfg.latent_dim)["fid"]
        self.rows.append((epoch, step, row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--width", type=int, default=32, help="dcgan_width (64 is the default config)")
    ap.add_argument("--samples", type=int, default=1000, help="classifier eval samples")
    ap.add_argument("--inception-samples", type=int, default=500, help="0 skips the Inception backbone")
    args = ap.parse_args()

    torch.set_num_threads(2)
    data = load_dataset("mnist-5k")
    t0 = time.perf_counter()
    classifier = Evaluator(data, "classifier", args.samples, "cpu", seed=0)
    inception = Evaluator(data, "inception", args.inception_samples, "cpu", seed=0) if args.inception_samples else None
    print(f"evaluators ready in {time.perf_counter() - t0:.0f} s; dcgan width {args.width}, batch 64, "
          f"{args.epochs} epochs, ema {args.ema} vs 0, classifier {args.samples} / inception "
          f"{args.inception_samples} samples", flush=True)

    finals: list[dict[str, float]] = []
    for seed in args.seeds:
        cfg = make_config({"arch": "dcgan", "dcgan_width": args.width, "epochs": args.epochs, "ema": args.ema,
                           "seed": seed, "device": "cpu", "eval_every": args.epochs})
        t = time.perf_counter()
        scores = ScoreBoth(cfg, data.shape, classifier, inception)
        train(cfg, data, scores)
        for epoch, step, row in scores.rows:
            print(f"seed {seed} epoch {epoch} step {step:4d}  classifier fid: no EMA {row['raw']:6.2f}  "
                  f"EMA {row['ema']:6.2f}", flush=True)
        finals.append(scores.rows[-1][2])
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)

    nan = float("nan")
    print(f"\nat the last step | classifier FID: no EMA | EMA {args.ema} | inception FID: no EMA | EMA {args.ema}")
    for seed, f in zip(args.seeds, finals, strict=True):
        print(f"seed {seed} | {f['raw']:.2f} | {f['ema']:.2f} | {f.get('raw_inception', nan):.1f} | "
              f"{f.get('ema_inception', nan):.1f}")
    med = {k: statistics.median(f.get(k, nan) for f in finals) for k in ("raw", "ema", "raw_inception",
                                                                          "ema_inception")}
    print(f"median | {med['raw']:.2f} | {med['ema']:.2f} | {med['raw_inception']:.1f} | {med['ema_inception']:.1f}")


if __name__ == "__main__":
    main()
