"""One `gan-pipeline sweep` of a benchmark cell, in a folder of its own (its own sqlite
store, its own local Ray), and the sweep's trial runs read back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_sweep(folder: Path, args: list[str], what: str) -> tuple[float, list[Any]]:
    """(the command's wall seconds, the sweep's trial runs) of `gan-pipeline sweep ARGS
    --name bench` run in `folder`; its output goes to folder/sweep.log. `what` names the
    cell in the error when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_TRACKING_URI": store}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "pipelines.cli", "sweep", *args, "--name", "bench",
               "--ray-storage", str(folder / "ray_results")]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    (folder / "sweep.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed: {done.stderr[-2000:]}")
    from mlflow import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("gan-pipelines")
    return wall, client.search_runs([exp.experiment_id], "tags.sweep_name = 'bench' and tags.tune_trial_id LIKE '%'")
