"""Streaming a prepared dataset against holding it in memory (issue 34).

    python benchmarks/bench_stream.py               # 20,000 and 200,000 images at 64 px
    python benchmarks/bench_stream.py --quick       # 2,000 and 20,000: a check in a minute

Writes synthetic prepared datasets (smooth random colour fields: what the trainer reads
costs the same whatever the pixels are) straight into shards, then runs each row in a
process of its own, so each peak RSS is that process's alone (its ru_maxrss):

    memory    peak RSS of a process that loads a 64 px dataset (--data-mode memory) and
              trains 100 steps on it (MLP, batch 64), at N and 10 N images; also the
              time from the process's start to its first step
    stream    the same with --data-mode stream: each step reads its batch from the shards
    speed     steps per second of a 32 px DCGAN (the defaults, batch 64) in memory and
              streamed, alternating three times in one run: streamed / in-memory
    folder    the loader before issue 34 (benchmarks/bench_prepare.py's copy: decode every
              file of a folder): seconds per 64 px PNG over 1,000 files, times 10 N (an
              estimate of its time to first step: it decodes every file before any step)

Everything lies in the page cache (just written): a cold disk adds reading time to the
first epoch of both ways, and to `memory`'s load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_prepared(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """N synthetic RGB images at `size` px as a prepared dataset (one shard in memory)."""
    from gan.prepared_writer import ShardWriter

    rng = np.random.default_rng(seed)
    with ShardWriter(folder, (3, size, size), False, n) as writer:
        for lo in range(0, n, 1024):
            k = min(1024, n - lo)
            coarse = rng.integers(0, 256, (k, 3, 4, 4), dtype=np.uint8)
            smooth = np.repeat(np.repeat(coarse, size // 4, axis=2), size // 4, axis=3)
            writer.add_batch(smooth + rng.integers(0, 8, smooth.shape, dtype=np.uint8))
        return writer.finish(f"synthetic:{n}", f"synthetic-{n}", f"synthetic-{n}-{size}-{seed}", size).manifest.path


CHILD = """
import json, resource, sys, time
started = float(sys.argv[4])
from gan.callbacks import Callbacks, StopTraining
from gan.config import make_config
from gan.data import load_dataset
from gan.train import train

steps, arch = int(sys.argv[3]), sys.argv[5]
class Clock(Callbacks):
    def __init__(self):
        self.first = None
        self.marks = []
    def on_metrics(self, rows):
        now = time.perf_counter()
        for step, _ in rows:
            if self.first is None:
                self.first = time.time() - started
            self.marks.append((step, now))
            if step >= steps:
                raise StopTraining("enough")
data = load_dataset("prepared:" + sys.argv[1], mode=sys.argv[2])
cfg = make_config({"arch": arch, "mlp_width": 64, "batch_size": 64, "epochs": 1, "device": "cpu",
                   "eval_budget": 0, "health_guard": False, "log_every": 1})
clock = Clock()
train(cfg, data, clock)
(s0, t0), (s1, t1) = clock.marks[10], clock.marks[-1]  # steps/s past the first ten (warm-up)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "first_step_s": clock.first, "steps_per_s": (s1 - s0) / (t1 - t0)}))
"""


def run(folder: Path, mode: str, steps: int, arch: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode, str(steps), repr(time.time()), arch],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def folder_seconds_per_image(tmp: Path, n: int = 1000) -> float:
    """The old loader's time per 64 px PNG (benchmarks/bench_prepare.py's copy of it)."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_prepare import old_folder

    folder = tmp / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    started = time.perf_counter()
    old_folder(folder, 64)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    small = 2_000 if args.quick else 20_000
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rows = {}
        for n in (small, 10 * small):
            folder = write_prepared(tmp / f"n{n}", n, 64)
            for mode in ("memory", "stream"):
                rows[(mode, n)] = r = run(folder, mode, 100, "mlp")
                print(f"{mode:7s} {n:>7,} images at 64 px: peak RSS {r['peak_mb']:7.0f} MB, first step after "
                      f"{r['first_step_s']:5.1f} s, {r['steps_per_s']:6.1f} steps/s", flush=True)
        for mode in ("memory", "stream"):
            a, b = rows[(mode, small)]["peak_mb"], rows[(mode, 10 * small)]["peak_mb"]
            print(f"{mode:7s} peak RSS at {10 * small:,} / at {small:,}: {b / a:.2f}x (+{b - a:.0f} MB)")
        speed_at = write_prepared(tmp / "speed", small, 32)
        speeds: dict[str, list[float]] = {"memory": [], "stream": []}
        for _ in range(3):
            for mode in ("memory", "stream"):
                speeds[mode].append(run(speed_at, mode, 60, "dcgan")["steps_per_s"])
        ratio = statistics.median(speeds["stream"]) / statistics.median(speeds["memory"])
        print(f"32 px DCGAN steps/s, memory {speeds['memory']}, stream {speeds['stream']}: "
              f"streamed / in-memory (medians) {ratio:.3f}")
        per_image = folder_seconds_per_image(tmp)
        print(f"the old folder loader: {per_image * 1000:.2f} ms per 64 px PNG; {10 * small:,} files before the "
              f"first step: about {per_image * 10 * small:.0f} s")


if __name__ == "__main__":
    main()
