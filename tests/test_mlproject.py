"""`mlflow run . -e train --env-manager local` records exactly one run: the project's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import sqlite_store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def test_entry_points_cover_the_cli_commands():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert set(project["entry_points"]) >= {"train", "sweep", "promote", "generate"}
    assert (ROOT / project["python_env"]).exists()


@pytest.mark.slow  # `mlflow run` starts its own process tree
def test_mlflow_run_train_entry_point_becomes_the_training_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = sqlite_store(tmp_path)
    # As in an activated virtual environment: the entry point calls `gan-pipeline` by name.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "train", "--env-manager", "local",
           "--experiment-name", "project", "-P", "epochs=1", "-P", "dcgan_width=8", "-P", "latent_dim=16",
           "-P", "eval_samples=100", "-P", "batch_size=128"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("project")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "the project run must be the training run, not a second one"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.params["epochs"] == "1" and run.data.params["dcgan_width"] == "8"
    assert len(client.get_metric_history(run.info.run_id, "d_loss")) == 5000 // 128
    from pipelines.tracking.models import model_roles

    assert model_roles(client, run.info.run_id) == {"best", "final"}
