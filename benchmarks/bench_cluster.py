"""The cost of going distributed (issue 14): the same sweep submitted as a Ray job to a
one-node and then a two-node Ray cluster on this machine (`ray start`, 1 CPU per node),
logging to an MLflow server on PostgreSQL with basic-auth and proxied artifacts: the
cluster of tests/test_cluster.py, measured in one run.

    python benchmarks/bench_cluster.py [--trials 4] [--epochs 2]

Per sweep: wall time of `ray job submit` (submit -> job done), the sweep's own
sweep.seconds (driver start -> last run closed), and per trial the seconds from entering
the trial function to its first logged step (trial.seconds_to_first_step).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cluster_parts import RayCluster, mlflow_server, postgres  # noqa: E402

from pipelines.tracking import names  # noqa: E402


def space(trials_epochs: int) -> dict:
    return {"description": "bench_cluster", "params": {
        "dataset": "mnist-5k", "arch": "mlp", "mlp_width": 16, "latent_dim": 16, "batch_size": 128,
        "eval_every": 1, "checkpoint_every": 1, "eval_samples": 200, "device": "cpu", "epochs": trials_epochs,
        "lr_g": {"type": "float", "low": 2.0e-4, "high": 1.0e-3, "log": True}}}


def sweep(cluster: RayCluster, root: Path, name: str, trials: int, epochs: int) -> dict:
    from pipelines.sweep.report import child_runs
    from pipelines.tracking.store import client_for
    from pipelines.tracking.sweeps import find_sweep

    job = root / name
    job.mkdir()
    (job / "space.yaml").write_text(yaml.safe_dump(space(epochs)))
    started = time.time()
    done = cluster.cli("job", "submit", "--working-dir", str(job), "--", "gan-pipeline", "sweep", "--space",
                       "space.yaml", "--trials", str(trials), "--concurrency", "2", "--scheduler", "none",
                       "--name", name, "--seed", "0", "--ray-storage", "ray_results", check=False)
    wall = time.time() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = client_for(cluster.env["MLFLOW_TRACKING_URI"])
    parent = find_sweep(client, name)
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    first = sorted(float(r.data.tags[names.TRIAL_SECONDS_TO_FIRST_STEP]) for r in runs
                   if names.TRIAL_SECONDS_TO_FIRST_STEP in r.data.tags)
    nodes = {r.data.tags.get(names.NODE_ID) for r in runs}
    return {"job_wall_s": round(wall, 1), "sweep_seconds": round(parent.data.metrics[names.SWEEP_SECONDS], 1),
            "trials": len(runs), "finished": sum(r.info.status == "FINISHED" for r in runs),
            "nodes_used": len(nodes), "first_step_s_median": round(statistics.median(first), 2),
            "first_step_s_min_max": [round(first[0], 2), round(first[-1], 2)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    password = secrets.token_urlsafe(24)
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg()[0],
                 "trials": args.trials, "epochs": args.epochs}
    with postgres(password) as db, mlflow_server(db, password, root / "artifacts", root / "mlflow.log") as server:
        os.environ.update(server.client_env)
        env = {"MLFLOW_TRACKING_URI": server.url, **server.client_env, "PYTHONWARNINGS": "ignore",
               "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        cluster = RayCluster(root, env, second_node=False)
        try:
            server.wait()
            out["one_node"] = sweep(cluster, root, "bench-one-node", args.trials, args.epochs)
            cluster.add_node("node_b")
            out["two_nodes"] = sweep(cluster, root, "bench-two-nodes", args.trials, args.epochs)
        finally:
            cluster.stop()
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
