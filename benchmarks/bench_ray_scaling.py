"""Ray Train data-parallel scaling of the one training loop on CPU.

Measures, for DCGAN on mnist-5k at the same per-worker batch:
  - steady-state images/s: 1 worker x 1 thread in-process (no Ray, no DDP) vs N Ray
    Train workers x 1 thread (DDP over gloo), from step times taken inside the loop by a
    callback (log_every=1), after `--warmup` steps;
  - the fixed start cost: wall time from the call to the end of the first step, for an
    in-process run (load data, build, step) and for a Ray Train run (TorchTrainer.fit:
    controller, worker processes, process group, load data, build, step), plus ray.init.
MLflow is left out of both: its cost is the same either way.

    python benchmarks/bench_ray_scaling.py                      # N=2, width 64, batch 64/worker
    python benchmarks/bench_ray_scaling.py --workers 2 --steps 60 --warmup 10 --json out.json
    python benchmarks/bench_ray_scaling.py --gpu --workers 2 --batch 256   # one GPU per worker
Step times are read after the loop's per-step loss read-back, so on a GPU they include
its synchronisation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from gan.callbacks import Callbacks, StopTraining
from gan.config import make_config
from gan.data import load_dataset
from gan.train import train


class StepClock(Callbacks):
    """(step, wall time, process CPU time) at the end of every step; ends the run after
    `stop_at` steps. Wall time is time.time, comparable across processes on one machine;
    CPU time shows whether a slower step did more work or waited for a core."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.times: list[tuple[int, float, float]] = []

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        now, cpu = time.time(), time.process_time()
        self.times += [(step, now, cpu) for step, _ in rows]
        if rows and rows[-1][0] >= self.stop_at:
            raise StopTraining("benchmark done")


def summarise(times: list, t0: float, warmup: int, global_batch: int) -> dict:
    """Median step time after the warm-up (robust to other jobs' bursts on a shared
    machine), its mean for comparison, CPU time per step, and t0 to the end of step 1."""
    steady = [(t, c) for s, t, c in times if s >= warmup]
    deltas = [b[0] - a[0] for a, b in itertools.pairwise(steady)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(steady)]
    per_step = statistics.median(deltas)
    return {
        "first_step_s": round(times[0][1] - t0, 2),
        "step_ms": round(1000 * per_step, 1),
        "mean_step_ms": round(1000 * statistics.fmean(deltas), 1),
        "cpu_ms_per_step": round(1000 * statistics.median(cpu), 1),
        "images_per_s": round(global_batch / per_step, 1),
    }


def timing_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker: the same loop, timed, with no tracking."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    cfg = make_config(config["cfg"])
    clock = StepClock(config["stop_at"])
    train(cfg, load_dataset(cfg.dataset), clock, device=ray.train.torch.get_device())
    # Result.metrics only keeps metrics reported with a checkpoint: hand the times back
    # through a file (the benchmark runs on one machine).
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            json.dump(clock.times, f)


def run_in_process(cfg_values: dict, stop_at: int) -> tuple[list, float]:
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = make_config(cfg_values)
    clock = StepClock(stop_at)
    train(cfg, load_dataset(cfg.dataset), clock, device=torch.device(cfg.device))
    return clock.times, t0


def run_ray(cfg_values: dict, workers: int, stop_at: int, storage: str) -> tuple[list, float]:
    from pipelines.distributed.options import RayOptions
    from pipelines.distributed.trainer import make_trainer

    gpu = cfg_values["device"] == "cuda"
    opts = RayOptions(workers=workers, gpu=gpu, cpus_per_worker=1, storage_path=storage)
    out = os.path.join(storage, f"times-{workers}.json")
    loop = {"cfg": cfg_values, "stop_at": stop_at, "out": out}
    t0 = time.time()
    make_trainer(opts, loop, f"bench-{workers}w-{int(t0)}", worker=timing_worker).fit()
    with open(out) as f:
        return [tuple(x) for x in json.load(f)], t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--width", type=int, default=64, help="--dcgan-width")
    ap.add_argument("--batch", type=int, default=64, help="batch per worker")
    ap.add_argument("--steps", type=int, default=60, help="steps timed after the warm-up")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker (in-process: cuda)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    stop_at = args.warmup + args.steps
    base = {"arch": "dcgan", "dcgan_width": args.width, "epochs": 1, "log_every": 1,
            "device": "cuda" if args.gpu else "cpu", "eval_every": 1000, "checkpoint_every": 1000}
    one = {**base, "batch_size": args.batch}
    many = {**base, "batch_size": args.batch * args.workers}
    rows: dict[str, dict] = {}
    load = [os.getloadavg()[0]]

    times, t0 = run_in_process(one, stop_at)
    rows["in-process, 1 worker x 1 thread"] = summarise(times, t0, args.warmup, args.batch)

    import ray

    from pipelines.distributed.connect import init_local

    t0 = time.time()
    # CPU: exactly one core per worker; GPU: Ray finds the machine's cores and GPUs
    init_local(num_cpus=None if args.gpu else args.workers, logging_level="WARNING")
    ray_init_s = round(time.time() - t0, 2)
    with tempfile.TemporaryDirectory() as storage:
        times, t0 = run_ray(one, 1, stop_at, storage)
        rows["Ray Train, 1 worker x 1 thread"] = summarise(times, t0, args.warmup, args.batch)
        times, t0 = run_ray(many, args.workers, stop_at, storage)
        backend = "nccl" if args.gpu else "gloo"
        rows[f"Ray Train, {args.workers} workers x 1 thread (DDP, {backend})"] = summarise(
            times, t0, args.warmup, args.batch * args.workers)
    ray.shutdown()
    # the baseline again: a shared machine's load drifts, and this shows by how much
    times, t0 = run_in_process(one, stop_at)
    rows["in-process again (drift check)"] = summarise(times, t0, args.warmup, args.batch)
    load.append(os.getloadavg()[0])

    base_ips = rows["in-process, 1 worker x 1 thread"]["images_per_s"]
    ray1_ips = rows["Ray Train, 1 worker x 1 thread"]["images_per_s"]
    print(f"dcgan width {args.width}, mnist-5k 28x28, batch {args.batch}/worker, "
          f"{args.steps} steps timed after {args.warmup}; torch {torch.__version__}, "
          f"ray {ray.__version__}, {os.cpu_count()} CPUs, 1-min load avg {load[0]:.2f} -> "
          f"{load[1]:.2f}")
    print(f"ray.init (local, once): {ray_init_s} s")
    print("| run | time to first step (s) | median ms/step (mean) | CPU ms/step (rank 0) "
          "| images/s | vs in-process | vs Ray 1 worker |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['first_step_s']} | {r['step_ms']} ({r['mean_step_ms']}) | "
              f"{r['cpu_ms_per_step']} | {r['images_per_s']} | "
              f"{r['images_per_s'] / base_ips:.2f}x | {r['images_per_s'] / ray1_ips:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "ray_init_s": ray_init_s, "load": load, "rows": rows},
                      f, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
