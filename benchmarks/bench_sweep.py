"""`gan-pipeline sweep` on this machine: the main job's wall time, per-trial start-up
overhead, and (optionally) search quality.

    python benchmarks/bench_sweep.py main             # the no-argument main job, ~5 min on 2 cores
    python benchmarks/bench_sweep.py quality --seeds 3  # TPE vs random on quick.yaml + baselines

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


def baseline_fid(arch: str) -> float:
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
                       "lr_d": 2e-4, "beta1": 0.5, "loss": "bce", "label_smoothing": 0.0})
    torch.set_num_threads(1)
    data = prepare(cfg)
    result = train(cfg, data, evaluator=build_evaluator(cfg, data, torch.device("cpu")))
    return result.eval_history[-1][1]["fid"]


def bench_quality(seeds: int) -> dict:
    rows = []
    for seed in range(seeds):
        for searcher in ("tpe", "random"):
            with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
                seconds, _ = run_cli(Path(tmp), "--searcher", searcher, "--seed", str(seed))
                kids = children(Path(tmp))
                finished = [k.data.metrics["fid"] for k in kids
                            if k.info.status == "FINISHED" and "fid" in k.data.metrics]
                rows.append({"seed": seed, "searcher": searcher, "wall_s": round(seconds),
                             "best_fid": round(min(finished), 1) if finished else None})
                print(json.dumps(rows[-1]), flush=True)
    base = {arch: round(baseline_fid(arch), 1) for arch in ("mlp", "dcgan")}
    best_base = min(base.values())
    for r in rows:
        r["ratio_to_baseline"] = round(r["best_fid"] / best_base, 3) if r["best_fid"] else None
    out = {"runs": rows, "baselines": base}
    for searcher in ("tpe", "random"):
        fids = [r["best_fid"] for r in rows if r["searcher"] == searcher and r["best_fid"]]
        if fids:
            out[f"{searcher}_median_best_fid"] = statistics.median(fids)
    print(json.dumps(out, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("main", "quality"))
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    os.chdir(REPO)
    if args.what == "main":
        bench_main()
    else:
        bench_quality(args.seeds)


if __name__ == "__main__":
    main()
