"""How busy a sweep keeps its trial slots (issue 25): of the slot-time a sweep holds (its
wall time x concurrency), the share its trials spend in training steps, in evals, and in
everything else, read from the runs themselves.

    python benchmarks/bench_sweep_efficiency.py                      # the default sweep (quick, 10 trials)
    python benchmarks/bench_sweep_efficiency.py --trials 40          # the 40-trial quick sweep
    python benchmarks/bench_sweep_efficiency.py --two-nodes          # on a two-node local cluster

Runs `gan-pipeline sweep --space SPACE --trials N --concurrency C` in a fresh folder (fresh
store, fresh local Ray) and reports:
- wall: the command's wall time; before the first trial: command start -> the first trial
  run's creation (Ray start, data, evaluator, parent run); after the last: the last trial
  run's end -> the command's end (report, shutdown);
- per trial (median): function entry -> first step (tag trial.seconds_to_first_step), and
  the rest of its run's life outside training and scoring;
- shares of slot-time (wall x C): training steps (sum of system/train_s), scoring (sum of
  system/eval_s), everything else. Every trial logs train_s/eval_s, pruned ones included;
- the training share within the trial phase alone (first trial run opened -> last one
  closed, x C): the ceiling that cutting the fixed costs before and after it can reach.
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


def run_sweep(folder: Path, space: str, trials: int, concurrency: int,
              cluster_env: dict[str, str] | None = None, ray_address: str | None = None) -> tuple[float, float, float]:
    """(start, end, wall) of the command, epoch seconds."""
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", **(cluster_env or {})}
    if cluster_env is None:
        env.pop("MLFLOW_TRACKING_URI", None)  # the sweep's own sqlite store in `folder`
    extra = ["--ray-address", ray_address] if ray_address else []
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "sweep", "--space", space, "--trials", str(trials),
                           "--concurrency", str(concurrency), "--name", "eff", *extra],
                          cwd=folder, env=env, capture_output=True, text=True, check=False)
    end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    return start, end, end - start


def measure(space: str, trials: int, concurrency: int, two_nodes: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-eff-") as tmp:
        folder = Path(tmp)
        if not two_nodes:
            start, end, wall = run_sweep(folder, space, trials, concurrency)
            runs = _runs(f"sqlite:///{folder / 'mlflow.db'}")
        else:
            start, end, wall, runs = _on_two_nodes(folder, space, trials, concurrency)
    return _figures(runs, space, concurrency, start, end, wall) | {"nodes": 2 if two_nodes else 1}


def _on_two_nodes(folder: Path, space: str, trials: int, concurrency: int) -> tuple[float, float, float, list]:
    """The same command against the two-node Ray cluster of tests/test_cluster.py (`ray
    start` x 2 on this machine, one CPU each, token auth) already running, as a user's
    cluster is, and an `mlflow server` every node reaches (basic-auth, sqlite behind it)."""
    import secrets

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cluster_parts import RayCluster, mlflow_server

    db = f"sqlite:///{folder / 'server.db'}"
    with mlflow_server(db, secrets.token_urlsafe(16), folder / "artifacts", folder / "mlflow.log") as server:
        env = {"MLFLOW_TRACKING_URI": server.url, **server.client_env}
        cluster = RayCluster(folder, env)
        try:
            server.wait()
            os.environ.update(server.client_env)  # this process reads the runs back
            start, end, wall = run_sweep(folder, space, trials, concurrency,
                                         {**env, "RAY_AUTH_MODE": "token",
                                          "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"]}, cluster.gcs_address)
            return start, end, wall, _runs(server.url)
        finally:
            cluster.stop()


def _runs(uri: str) -> list:
    from pipelines.sweep.report import child_runs
    from pipelines.tracking import names
    from pipelines.tracking.store import client_for

    client = client_for(uri)
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                f"tags.`{names.SWEEP_ROLE}` = 'parent'")[0]
    return child_runs(client, parent.info.experiment_id, parent.info.run_id)


def _figures(runs: list, space: str, concurrency: int, start: float, end: float, wall: float) -> dict:
    from pipelines.tracking import names

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
        # The same share within the trial phase alone (first trial run opened -> last one
        # closed): what no cut in the fixed costs before and after it can raise.
        "share_train_in_trial_phase": round(train / ((last - first) * concurrency), 3),
        "share_other": round(1 - (train + evals) / slot, 3),
        "slots_busy_with_trials": round(sum(lives) / slot, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--space", default="quick")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--two-nodes", action="store_true",
                    help="on a two-node Ray cluster started here (one CPU per node), as a user's cluster")
    args = ap.parse_args()
    print(json.dumps(measure(args.space, args.trials, args.concurrency, args.two_nodes), indent=2))


if __name__ == "__main__":
    sys.exit(main())
