"""FID-style curve of the default training config on mnist-5k, and evaluation cost as a
fraction of one training epoch (classifier backbone, default sample count).

    python benchmarks/bench_fid_curve.py --epochs 10 --grids benchmarks/fid_curve

Prints one row per epoch (train seconds, eval seconds, fid, kid, precision, recall) and
writes the sample grid of every eval as PNG so the look can be checked.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.data import load_dataset
from gan.metrics import Evaluator
from gan.train import resolve_device, train


class Timed(Callbacks):
    def __init__(self, grids: Path | None) -> None:
        self.t = time.perf_counter()
        self.rows: list[tuple[int, float, dict]] = []
        self.grids = grids

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        self.rows.append((epoch, now - self.t, metrics))
        if self.grids:
            from PIL import Image

            self.grids.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(self.grids / f"epoch_{epoch:03d}.png")
        self.t = time.perf_counter()


class TimedEvaluator:
    def __init__(self, inner: Evaluator) -> None:
        self.inner, self.seconds = inner, []

    def __call__(self, generator, latent_dim):
        t = time.perf_counter()
        out = self.inner(generator, latent_dim)
        self.seconds.append(time.perf_counter() - t)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--grids", type=Path, default=None)
    args = ap.parse_args()
    cfg = make_config({"epochs": args.epochs, "device": "cpu"})
    data = load_dataset(cfg.dataset)
    device = resolve_device(cfg.device)
    t = time.perf_counter()
    evaluator = TimedEvaluator(Evaluator(data, cfg.backbone, cfg.eval_samples, device, cfg.seed))
    print(f"default config: arch={cfg.arch} width={cfg.dcgan_width} batch={cfg.batch_size} lr={cfg.lr_g} "
          f"eval_samples={cfg.eval_samples}; evaluator ready in {time.perf_counter() - t:.1f} s")
    cb = Timed(args.grids)
    train(cfg, data, cb, evaluator=evaluator, device=device)
    print("epoch  train_s  eval_s  eval/epoch    fid      kid  precision  recall")
    for (epoch, wall, m), ev in zip(cb.rows, evaluator.seconds, strict=True):
        tr = wall - ev
        print(f"{epoch:5d}  {tr:7.1f}  {ev:6.2f}  {ev / tr:9.1%}  {m['fid']:7.2f}  {m['kid']:7.3f}  "
              f"{m['precision']:9.3f}  {m['recall']:6.3f}")


if __name__ == "__main__":
    main()
