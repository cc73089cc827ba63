"""`gan-pipeline sweep` on this machine: the main job's wall time, per-trial start-up
overhead, and (optionally) search quality.

    python benchmarks/bench_sweep.py main             # the no-argument main job, ~5 min on 2 cores
    python benchmarks/bench_sweep.py quality --seeds 3  # TPE vs random on quick.yaml + baselines
    python benchmarks/bench_sweep.py quality --seeds 3 --trials 40 --baseline-seeds 3  # ~40 min

main: runs `gan-pipeline sweep` with no arguments in a fresh folder (fresh MLflow store,
fresh Ray) and reports its wall time, and from the child runs the time from a trial's
function entry to its first logged training step (tag trial.seconds_to_first_step).

quality: for each seed, the quick.yaml sweep with --searcher tpe and --searcher random
(equal budget: same trials, same ASHA), then the tutorial defaults (lr 2e-4, beta1 0.5,
BCE, no smoothing) trained with quick.yaml's fixed values for each architecture family
at its largest quick width. Reports each sweep's best final FID and its ratio to the
better baseline (target <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _client(folder: Path):
    from pipelines.tracking.store import client_for

    return client_for(f"sqlite:///{folder / 'mlflow.db'}")


def run_cli(folder: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "sweep", *args], cwd=folder,
                          env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def children(folder: Path) -> list:
    client = _client(folder)
    exp = client.get_experiment_by_name("gan-pipelines")
    return client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")


def bench_main() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        folder = Path(tmp)
        seconds, stdout = run_cli(folder)
        kids = children(folder)
        firsts = sorted(float(k.data.tags["trial.seconds_to_first_step"]) for k in kids
                        if "trial.seconds_to_first_step" in k.data.tags)
        status = {s: sum(k.info.status == s for k in kids) for s in ("FINISHED", "KILLED", "FAILED")}
    out = {
        "wall_s": round(seconds, 1), "trials": len(kids), **status,
        "first_step_s_median": round(statistics.median(firsts), 2) if firsts else None,
        "first_step_s_max": round(max(firsts), 2) if firsts else None,
        "first_step_s_all": firsts, "best_line": next(
            (line for line in stdout.splitlines() if line.startswith("best trial")), ""),
    }
    print(json.dumps(out, indent=2))
    return out


def baseline_fid(arch: str, seed: int = 0) -> float:
    """The tutorial defaults at quick.yaml's fixed values (epochs, eval samples, ...)."""
    import torch

    from gan.config import make_config
    from gan.train import train
    from pipelines.sweep.space_file import load_space
    from pipelines.training.prepare import build_evaluator, prepare

    space = load_space("quick")
    width = {"mlp": ("mlp_width", space.max_value("mlp_width")),
             "dcgan": ("dcgan_width", space.max_value("dcgan_width"))}[arch]
    cfg = make_config({**space.fixed, "arch": arch, width[0]: width[1], "lr_g": 2e-4,
                       "lr_d": 2e-4, "beta1": 0.5, "loss": "bce", "label_smoothing": 0.0, "seed": seed})
    torch.set_num_threads(1)
    data = prepare(cfg)
    result = train(cfg, data, evaluator=build_evaluator(cfg, data, torch.device("cpu")))
    return result.eval_history[-1][1]["fid"]


def best_so_far(kids: list, budgets: tuple[int, ...]) -> dict[int, float | None]:
    """The best final FID among the FINISHED trials of the first N started, for each N."""
    ordered = sorted(kids, key=lambda k: k.info.start_time)
    out: dict[int, float | None] = {}
    for n in budgets:
        fids = [k.data.metrics["fid"] for k in ordered[:n] if k.info.status == "FINISHED" and "fid" in k.data.metrics]
        out[n] = round(min(fids), 2) if fids else None
    return out


def bench_quality(seeds: int, trials: int | None, baseline_seeds: int) -> dict:
    rows = []
    budgets = tuple(sorted({10, 20, trials or 10}))
    for seed in range(seeds):
        for searcher in ("tpe", "random"):
            with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
                extra = ["--trials", str(trials)] if trials else []
                seconds, _ = run_cli(Path(tmp), "--searcher", searcher, "--seed", str(seed), *extra)
                kids = children(Path(tmp))
                curve = best_so_far(kids, budgets)
                rows.append({"seed": seed, "searcher": searcher, "wall_s": round(seconds), "trials": len(kids),
                             "finished": sum(k.info.status == "FINISHED" for k in kids),
                             "best_fid": curve[max(budgets)], "best_fid_after": curve})
                print(json.dumps(rows[-1]), flush=True)
    base = {arch: [round(baseline_fid(arch, s), 2) for s in range(baseline_seeds)] for arch in ("mlp", "dcgan")}
    best_base = min(statistics.median(v) for v in base.values())
    for r in rows:
        r["ratio_to_baseline"] = round(r["best_fid"] / best_base, 3) if r["best_fid"] else None
    out: dict = {"runs": rows, "baselines": base, "baseline_median_of_better_arch": best_base}
    for searcher in ("tpe", "random"):
        for n in budgets:
            fids = [r["best_fid_after"][n] for r in rows if r["searcher"] == searcher and r["best_fid_after"][n]]
            if fids:
                out[f"{searcher}_median_best_fid_after_{n}"] = statistics.median(fids)
    print(json.dumps(out, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("main", "quality"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=None, help="quality: trials a sweep (default: quick.yaml's 10)")
    p.add_argument("--baseline-seeds", type=int, default=1)
    args = p.parse_args()
    os.chdir(REPO)
    if args.what == "main":
        bench_main()
    else:
        bench_quality(args.seeds, args.trials, args.baseline_seeds)


if __name__ == "__main__":
    main()
