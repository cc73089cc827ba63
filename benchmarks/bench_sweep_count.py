"""Does a sweep of N trials end with exactly N trial runs under its parent?

    python benchmarks/bench_sweep_count.py                       # 3 x (40 trials, 4 at a time), ~6 min each on 2 cores
    python benchmarks/bench_sweep_count.py --repeats 1 --trials 12 --concurrency 4

Each repeat runs `gan-pipeline sweep` (a tiny MLP space on mnist-5k: 3 epochs, ASHA
after every epoch, so most trials are pruned) in a fresh folder with a fresh sqlite
store and a fresh local Ray, then reads what the sweep left:

  runs      the child runs under the sweep's parent (tag mlflow.parentRunId), per status
  reasons   KILLED without stopped_reason / FAILED without error (the invariant says none)
  shared    a trial id carried by more than one run, or a run a second trial continued
            (reopened: tag sweep.resumed_from_step, or an epoch scored twice); such a run
            also leaves a Tune trial with no run of its own
  no run    Tune trials (trial_<id> folders of the sweep's Tune experiment) with no run
  reuse     driver lines "Could not re-use actor for trial": a reused actor whose previous
            trial's thread outlived TUNE_FUNCTION_THREAD_TIMEOUT_S (Ray's default: 2 s);
            Ray then errors the *new* trial before its function runs (no run, no retry)

and prints one table row per repeat; --json writes the rows too. Exit status 1 when any
repeat recorded a number of runs other than --trials.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """\
description: bench_sweep_count tiny space (seconds per trial)
params:
  dataset: mnist-5k
  epochs: 3
  eval_every: 1
  eval_samples: 100
  latent_dim: 16
  device: cpu
  batch_size: 256
  arch: mlp
  mlp_width: 8
  lr_g: {type: float, low: 5.0e-5, high: 3.0e-3, log: true}
  lr_d: {type: float, low: 5.0e-5, high: 3.0e-3, log: true}
"""

PARENT_RUN = "mlflow.parentRunId"  # pipelines.tracking.names, spelled out: read-only here
TRIAL_ID = "tune_trial_id"
SWEEP_ROLE = "sweep.role"
STOPPED_REASON = "stopped_reason"
ERROR = "error"
RESUMED_FROM_STEP = "sweep.resumed_from_step"  # a trial reopened this run (no resume in a fresh sweep)
REUSE_FAILED = re.compile(r"Could not re-use actor for trial (\S+):")


def run_sweep(folder: Path, trials: int, concurrency: int, searcher: str, seed: int,
              extra_env: dict[str, str]) -> tuple[int, float, str]:
    (folder / "space.yaml").write_text(SPACE)
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", **extra_env}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "pipelines.cli", "sweep", "--space", str(folder / "space.yaml"),
            "--trials", str(trials), "--concurrency", str(concurrency), "--searcher", searcher,
            "--seed", str(seed), "--experiment", "count", "--name", "count",
            "--ray-storage", str(folder / "ray_results")]
    t = time.perf_counter()
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    (folder / "sweep.log").write_text(done.stdout + done.stderr)
    return done.returncode, seconds, done.stdout + done.stderr


def read_back(folder: Path, experiment: str = "count", name: str = "count") -> dict:
    """What the sweep `name` in `folder` left: its child runs, its Tune trials, its driver log."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], f"tags.`{SWEEP_ROLE}` = 'parent'") if exp else []
    runs = (client.search_runs([exp.experiment_id], f"tags.`{PARENT_RUN}` = '{parents[0].info.run_id}'",
                               max_results=50_000) if parents else [])
    status = collections.Counter(r.info.status for r in runs)
    by_trial = collections.defaultdict(list)
    for r in runs:
        by_trial[r.data.tags.get(TRIAL_ID, "")].append(r.info.run_id)
    shared = {t: ids for t, ids in by_trial.items() if len(ids) > 1}
    # One run continued by a second Tune trial (a stale trial id): it was reopened, or its
    # evals repeat an epoch.
    for r in runs:
        epochs = [m.value for m in client.get_metric_history(r.info.run_id, "epoch")]
        if RESUMED_FROM_STEP in r.data.tags or len(epochs) != len(set(epochs)):
            shared.setdefault(r.data.tags.get(TRIAL_ID, ""), []).append(f"{r.info.run_id} (reopened)")
    no_reason = [r.info.run_id for r in runs
                 if (r.info.status == "KILLED" and not r.data.tags.get(STOPPED_REASON))
                 or (r.info.status == "FAILED" and not (r.data.tags.get(STOPPED_REASON) or r.data.tags.get(ERROR)))]
    tune_dir = folder / "ray_results" / name
    tune_ids = sorted(p.name.removeprefix("trial_") for p in tune_dir.glob("trial_*") if p.is_dir())
    no_run = [t for t in tune_ids if t not in by_trial]
    log = (folder / "sweep.log").read_text() if (folder / "sweep.log").exists() else ""
    reuse_failed = REUSE_FAILED.findall(log)
    return {"runs": len(runs), "status": dict(status), "shared": shared, "no_reason": no_reason,
            "tune_trials": len(tune_ids), "no_run": no_run, "reuse_failed": reuse_failed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--searcher", choices=["tpe", "random", "both"], default="both",
                   help="both: alternate tpe and random across repeats (default)")
    p.add_argument("--thread-timeout", type=int, default=None, metavar="S",
                   help="set TUNE_FUNCTION_THREAD_TIMEOUT_S for the sweep (default: leave Ray's 2 s)")
    p.add_argument("--keep", action="store_true", help="keep each repeat's folder (printed)")
    p.add_argument("--json", type=Path, help="write the rows here")
    a = p.parse_args()
    extra = {} if a.thread_timeout is None else {"TUNE_FUNCTION_THREAD_TIMEOUT_S": str(a.thread_timeout)}
    rows = []
    head = (f"{'#':>2} {'searcher':8} {'asked':>5} {'runs':>5} {'FIN':>4} {'KIL':>4} {'FAIL':>4} {'RUN':>4} "
            f"{'tune':>5} {'no run':>6} {'shared':>6} {'no why':>6} {'reuse!':>6} {'rc':>3} {'min':>5}")
    print(head)
    for i in range(a.repeats):
        searcher = a.searcher if a.searcher != "both" else ("tpe", "random")[i % 2]
        folder = Path(tempfile.mkdtemp(prefix=f"bench-count-{i}-"))
        rc, seconds, _ = run_sweep(folder, a.trials, a.concurrency, searcher, seed=i, extra_env=extra)
        got = read_back(folder)
        st = got["status"]
        row = {"repeat": i, "searcher": searcher, "asked": a.trials, "rc": rc, "seconds": round(seconds, 1),
               "folder": str(folder), **got}
        rows.append(row)
        print(f"{i:>2} {searcher:8} {a.trials:>5} {got['runs']:>5} {st.get('FINISHED', 0):>4} "
              f"{st.get('KILLED', 0):>4} {st.get('FAILED', 0):>4} {st.get('RUNNING', 0):>4} "
              f"{got['tune_trials']:>5} {len(got['no_run']):>6} {len(got['shared']):>6} "
              f"{len(got['no_reason']):>6} {len(got['reuse_failed']):>6} {rc:>3} {seconds / 60:>5.1f}", flush=True)
        for t in got["no_run"]:
            why = "reuse of its actor failed" if any(t in x for x in got["reuse_failed"]) else "?"
            print(f"     Tune trial {t}: no run ({why})")
        for t, ids in got["shared"].items():
            print(f"     trial id {t!r} on {len(ids)} runs: {', '.join(ids)}")
        if not a.keep:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    bad = [r for r in rows if r["runs"] != r["asked"]]
    print(f"\n{len(bad)} of {len(rows)} sweeps recorded a number of runs other than asked")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
