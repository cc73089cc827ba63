"""How busy a sweep keeps its trial slots (issue 25): of the slot-time a sweep holds (its
wall time x concurrency), the share its trials spend in training steps, in evals, and in
everything else, read from the runs themselves.

    python benchmarks/bench_sweep_efficiency.py                      # the default sweep (quick, 10 trials)
    python benchmarks/bench_sweep_efficiency.py --trials 40          # the 40-trial quick sweep

Runs `gan-pipeline sweep --space SPACE --trials N --concurrency C` in a fresh folder (fresh
store, fresh local Ray) and reports:
- wall: the command's wall time; before the first trial: command start -> the first trial
  run's creation (Ray start, data, evaluator, parent run); after the last: the last trial
  run's end -> the command's end (report, shutdown);
- per trial (median): function entry -> first step (tag trial.seconds_to_first_step), and
  the rest of its run's life outside training and scoring;
- shares of slot-time (wall x C): training steps (sum of system/train_s), scoring (sum of
  system/eval_s), everything else. Every trial logs train_s/eval_s, pruned ones included.
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


def run_sweep(folder: Path, space: str, trials: int, concurrency: int) -> tuple[float, float, float]:
    """(start, end, wall) of the command, epoch seconds."""
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "sweep", "--space", space, "--trials", str(trials),
                           "--concurrency", str(concurrency), "--name", "eff"],
                          cwd=folder, env=env, capture_output=True, text=True, check=False)
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    return start, end, end - start


def measure(space: str, trials: int, concurrency: int) -> dict:
    from pipelines.sweep.report import child_runs
    from pipelines.tracking import names
    from pipelines.tracking.store import client_for

    with tempfile.TemporaryDirectory(prefix="bench-eff-") as tmp:
        folder = Path(tmp)
        start, end, wall = run_sweep(folder, space, trials, concurrency)
        client = client_for(f"sqlite:///{folder / 'mlflow.db'}")
        parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    f"tags.`{names.SWEEP_ROLE}` = 'parent'")[0]
        runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    first = min(r.info.start_time for r in runs) / 1000
    last = max(r.info.end_time for r in runs) / 1000
    train = sum(r.data.metrics.get(names.TRAIN_S, 0.0) for r in runs)
    evals = sum(r.data.metrics.get(names.EVAL_S, 0.0) for r in runs)
    lives = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    outside = [life - r.data.metrics.get(names.TRAIN_S, 0.0) - r.data.metrics.get(names.EVAL_S, 0.0)
               for life, r in zip(lives, runs, strict=True)]
    to_first = [float(r.data.tags[names.TRIAL_SECONDS_TO_FIRST_STEP]) for r in runs
                if names.TRIAL_SECONDS_TO_FIRST_STEP in r.data.tags]
    slot = wall * concurrency
    return {
        "space": space, "trials": len(runs), "concurrency": concurrency, "wall_s": round(wall, 1),
        "before_first_trial_s": round(first - start, 1), "after_last_trial_s": round(end - last, 1),
        "trial_life_median_s": round(statistics.median(lives), 2),
        "entry_to_first_step_median_s": round(statistics.median(to_first), 2) if to_first else None,
        "outside_train_and_eval_median_s": round(statistics.median(outside), 2),
        "with_train_s": sum(names.TRAIN_S in r.data.metrics for r in runs),
        "share_train": round(train / slot, 3), "share_eval": round(evals / slot, 3),
        "share_other": round(1 - (train + evals) / slot, 3),
        "slots_busy_with_trials": round(sum(lives) / slot, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="quick")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    print(json.dumps(measure(args.space, args.trials, args.concurrency), indent=2))


if __name__ == "__main__":
    sys.exit(main())
