"""`gan-pipeline train` end to end: a real process, a real sqlite MLflow store, a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

FAST = ["--dcgan-width", "8", "--mlp-width", "8", "--latent-dim", "16", "--device", "cpu",
        "--eval-budget", "0"]  # every epoch scored: the tests count evals


def cli(cwd: Path, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    e = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **(env or {})}
    e.pop("GAN_PIPELINES_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{cwd}/mlflow.db")


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

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
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

    # `gan-pipeline evaluate` scores that generator and logs the scores back to the run.
    ev = cli(tmp_path, "evaluate", "--run-id", rid, "--log")
    out, err = ev.communicate(timeout=600)
    assert ev.returncode == 0, err
    assert "fid" in out and "logged in training" in out and "vs mnist-5k (classifier, 1000 samples, seed 0)" in out
    logged = c.get_run(rid).data.metrics
    # with the run's own settings (the defaults) the score is the one training logged
    assert logged["eval_classifier_fid"] == pytest.approx(logged["fid"], rel=1e-6)
    assert logged["eval_classifier_recall"] == pytest.approx(logged["recall"], rel=1e-6)


def test_resume_after_a_kill_continues_the_same_run_without_duplicate_steps(tmp_path):
    args = ["train", "--epochs", "4", "--experiment", "kill", "--batch-size", "128", *FAST]
    lease = {"GAN_PIPELINES_LEASE_TIMEOUT_S": "2"}  # the dead owner's lease goes stale in 2 s
    p = cli(tmp_path, *args, env=lease)
    ckpt_dir = tmp_path / "mlartifacts" / "kill"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt_dir.glob("*/artifacts/checkpoints/epoch_00001.pt")):
        assert p.poll() is None, p.communicate()[1]
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()

    c = client(tmp_path)
    exp = c.get_experiment_by_name("kill").experiment_id
    (run,) = c.search_runs([exp])
    assert run.info.status == "RUNNING"  # killed hard: nobody marked it
    logged_before = [m.step for m in c.get_metric_history(run.info.run_id, "d_loss")]
    assert 0 < len(logged_before) < 4 * 39

    time.sleep(3)
    r = cli(tmp_path, "train", "--resume", "--experiment", "kill", env=lease)
    out, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    runs = c.search_runs([exp])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "d_loss")]
    assert sorted(steps) == list(range(1, 4 * 39 + 1))  # every step once: no gap, no duplicate
    ckpts = [a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")]
    assert ckpts[-1] == "checkpoints/epoch_00004.pt"


BAD_INPUTS = [
    (["--dataset", "imagenet"], "dataset='imagenet' is invalid"),
    (["--arch", "resnet"], "arch='resnet' is invalid"),
    (["--lr-g", "0"], "lr_g=0.0 is invalid"),
    (["--lr-d", "-0.1"], "lr_d=-0.1 is invalid"),
    (["--label-smoothing", "0.5"], "label_smoothing=0.5 is invalid"),
    (["--beta1", "1"], "beta1=1.0 is invalid"),
    (["--beta2", "1.5"], "beta2=1.5 is invalid"),
    (["--batch-size", "6000"], "batch_size=6000 is invalid"),
    (["--lr-g", "fast"], "argument --lr-g: invalid float value"),
    (["--config", "/nonexistent/c.yaml"], "cannot be read"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(tmp_path, flags, message, capsys):
    from pipelines.cli import main

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        code = _main_exit_code(main, ["train", *flags])
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    if (tmp_path / "mlflow.db").exists():
        c = client(tmp_path)
        assert all(not c.search_runs([e.experiment_id]) for e in c.search_experiments())


def _main_exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse exits for flag-type errors
        return int(e.code)


def test_empty_and_non_image_folders_and_unwritable_store(tmp_path, capsys):
    from pipelines.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        ({}, ["--dataset", f"folder:{empty}"], "holds no images"),
        ({"MLFLOW_TRACKING_URI": f"sqlite:///{blocker}/mlflow.db"}, [], "is not writable"),
    ]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.jpg").write_text("not a jpeg")
    cases.append(({}, ["--dataset", f"folder:{tmp_path / 'junk'}"], "is not a readable image"))
    from PIL import Image

    (tmp_path / "faces").mkdir()
    for i in range(70):
        Image.new("RGB", (32, 32), (i, 2 * i, 3 * i)).save(tmp_path / "faces" / f"{i}.png")
    # Images without labels cannot train the classifier backbone: bad input, before any run.
    cases.append(({}, ["--dataset", f"folder:{tmp_path / 'faces'}"], "--backbone inception"))
    for env, flags, message in cases:
        os.environ["MLFLOW_TRACKING_URI"] = env.get("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
        try:
            code = _main_exit_code(main, ["train", *flags])
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        if (tmp_path / "mlflow.db").exists():
            c = client(tmp_path)
            assert all(not c.search_runs([e.experiment_id]) for e in c.search_experiments())


def test_help_describes_every_flag():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ["--config", "--dataset", "--data-dir", "--arch", "--latent-dim", "--epochs",
                 "--batch-size", "--lr-g", "--lr-d", "--beta1", "--beta2", "--label-smoothing",
                 "--loss", "--n-dis", "--ema", "--seed", "--eval-every", "--eval-budget", "--checkpoint-every",
                 "--experiment", "--run-name", "--resume"]:
        assert flag in out
    top = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "train" in top


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
