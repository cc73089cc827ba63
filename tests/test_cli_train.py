"""`gan-pipeline train` end to end: a real process, a real sqlite MLflow store, a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import sqlite_store, wait_for

pytestmark = pytest.mark.integration

FAST = ["--dcgan-width", "8", "--mlp-width", "8", "--latent-dim", "16", "--device", "cpu",
        "--eval-budget", "0"]  # every epoch scored: the tests count evals


def cli(cwd: Path, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    e = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_store(cwd), **(env or {})}
    e.pop("GAN_PIPELINES_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_store(cwd))


def test_one_epoch_on_mnist_5k_records_a_complete_run(tmp_path):
    p = cli(tmp_path, "train", "--epochs", "1", "--experiment", "e2e", "--run-name", "first", *FAST)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "finished run" in out and "mlflow ui --backend-store-uri" in out

    c = client(tmp_path)
    (run,) = c.search_runs([c.get_experiment_by_name("e2e").experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    params = run.data.params
    assert params["dataset"] == "mnist-5k" and params["lr_g"] == "0.0002" and params["world_size"] == "1"
    assert run.data.tags["dataset"] == "mnist-5k" and "version.torch" in run.data.tags
    steps = [m.step for m in c.get_metric_history(rid, "d_loss")]
    assert steps == list(range(1, 5000 // 64 + 1))
    for key in ("g_loss", "D_x", "D_G_z"):
        assert len(c.get_metric_history(rid, key)) == len(steps)

    top = {a.path for a in c.list_artifacts(rid)}
    assert {"config.yaml", "progress.gif", "checkpoints", "images"} <= top
    from pipelines.tracking.models import model_roles

    assert model_roles(c, rid) == {"best", "final"}  # one eval: the best is the final
    assert any(a.path.endswith(".png") for a in c.list_artifacts(rid, "images"))
    assert [a.path for a in c.list_artifacts(rid, "checkpoints")] == ["checkpoints/epoch_00001.pt"]

    import mlflow
    import torch

    mlflow.set_tracking_uri(sqlite_store(tmp_path))
    from gan.data import to_uint8
    from gan.sampling import sample_latents

    # The two faces of the logged generator are one function: the torch module on the
    # latents a seed stands for gives exactly the pyfunc's images for that seed.
    g = mlflow.pytorch.load_model(f"runs:/{rid}/generator")
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{rid}/generator")
    batch = pyfunc.predict(pd.DataFrame(), params={"num_images": 5, "seed": 3, "format": "array"})
    assert batch.shape == (5, 1, 28, 28) and batch.dtype == np.uint8
    with torch.no_grad():
        assert np.array_equal(to_uint8(g(sample_latents(5, 16, 3))).numpy(), batch)

    # `gan-pipeline evaluate`, in a process of its own given only the models:/ URI train
    # printed, scores that generator and logs the scores back to the run.
    (uri,) = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("generator: models:/m-")]
    (model,) = [m for m in c.search_logged_models([run.info.experiment_id]) if f"models:/{m.model_id}" == uri]
    ev = cli(tmp_path, "evaluate", "--model", uri, "--log")
    out, err = ev.communicate(timeout=600)
    assert ev.returncode == 0, err
    assert f"{uri} vs mnist-5k (classifier, 1000 samples, seed 0)" in out and f"logged to run {rid}" in out
    assert "logged in training" in out.split("\nfid ", 1)[1].splitlines()[0]
    logged = c.get_run(rid).data.metrics
    linked = {m.key: m.value for m in model.metrics}
    # with the run's own settings (the defaults) the score is the one training logged
    for key in ("fid", "recall"):
        assert logged[f"eval_classifier_{key}"] == pytest.approx(linked[key], rel=1e-6)
        assert linked[key] == logged[key]  # one eval: the model's score is the run's last


@pytest.mark.slow  # tests/test_faults.py kills and resumes a run in the fast suite
def test_resume_after_a_kill_continues_the_same_run_without_duplicate_steps(tmp_path):
    args = ["train", "--epochs", "4", "--experiment", "kill", "--batch-size", "128", *FAST]
    lease = {"GAN_PIPELINES_LEASE_TIMEOUT_S": "2"}  # the dead owner's lease goes stale in 2 s
    p = cli(tmp_path, *args, env=lease)
    ckpt_dir = tmp_path / "mlartifacts" / "kill"

    def while_training(condition):
        assert p.poll() is None, p.communicate()[1]
        return condition()

    # The run exists (so the store is made) once its first checkpoint is in the artifacts;
    # the checkpoint is whole once a step of epoch 2 is logged (the upload is synchronous,
    # before epoch 2 trains): kill then, so the resume has steps past it to not log twice.
    wait_for(lambda: while_training(lambda: list(ckpt_dir.glob("*/artifacts/checkpoints/epoch_00001.pt"))))
    c = client(tmp_path)
    exp = c.get_experiment_by_name("kill").experiment_id
    (run,) = c.search_runs([exp])
    wait_for(lambda: while_training(lambda: any(m.step > 39 for m in c.get_metric_history(run.info.run_id, "d_loss"))),
             every=0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()

    run = c.get_run(run.info.run_id)
    assert run.info.status == "RUNNING"  # killed hard: nobody marked it
    logged_before = [m.step for m in c.get_metric_history(run.info.run_id, "d_loss")]
    assert max(logged_before) > 39 and len(logged_before) < 4 * 39

    # Resume once the dead owner's lease holds nothing (its process is gone, or, failing
    # that check, its heartbeat has gone stale).
    from pipelines.tracking.lease import holder

    wait_for(lambda: holder(c.get_run(run.info.run_id)) is None, timeout=120)
    r = cli(tmp_path, "train", "--resume", "--experiment", "kill", env=lease)
    out, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    runs = c.search_runs([exp])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "d_loss")]
    assert sorted(steps) == list(range(1, 4 * 39 + 1))  # every step once: no gap, no duplicate
    ckpts = [a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")]
    assert ckpts[-1] == "checkpoints/epoch_00004.pt"


def test_help_describes_every_flag(capsys):
    from pipelines.cli import main

    for argv in (["train", "--help"], ["--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ["--config", "--dataset", "--data-dir", "--arch", "--latent-dim", "--epochs",
                 "--batch-size", "--lr-g", "--lr-d", "--beta1", "--beta2", "--label-smoothing",
                 "--loss", "--n-dis", "--ema", "--seed", "--eval-every", "--eval-budget", "--checkpoint-every",
                 "--experiment", "--run-name", "--resume"]:
        assert flag in out
    assert all(command in out for command in ("train", "sweep", "promote", "generate", "evaluate"))


@pytest.mark.slow  # the lifecycle matrix's diverged[local] cell is the fast one
def test_an_absurd_learning_rate_fails_the_run_with_its_reason_and_no_score(tmp_path):
    from pipelines.tracking.models import model_roles

    p = cli(tmp_path, "train", "--arch", "mlp", "--epochs", "1", "--lr-g", "1e300", "--experiment", "nan", *FAST)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 1, err
    assert err.count("\n") == 1 and "RunDiverged" in err and "health: non-finite losses at step" in err
    c = client(tmp_path)
    (run,) = c.search_runs([c.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["stopped_reason"].startswith("health: non-finite losses at step")
    assert "fid" not in run.data.metrics and c.get_metric_history(run.info.run_id, "d_loss")  # kept what it logged
    assert model_roles(c, run.info.run_id) == set()  # nothing for promote to pick
