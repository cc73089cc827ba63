"""The run lifecycle's guarantees, each one test run in every mode a run trains in: a
local `train`, `train --workers 2` (Ray Train), a sweep trial and a sweep trial with
`--workers-per-trial 2`. One real Ray for the module (with the test-only fault hooks of
tests/faults in its workers), real sqlite MLflow stores, the CLI's own entry function.

Guarantees proven elsewhere, by mode (same process kinds, real signals):
  kill -9 + resume exact   local: test_faults.py (an eval a kill interrupted redone once);
                           Ray Train: test_ray_train.py (a worker killed, the group restarts);
                           trial: test_sweep_faults.py (driver killed, sweep --resume)
  server lost mid-run      every mode: test_server_loss.py (a real server killed -9 and back;
                           each mode its own process, as a user runs it)
  one best model           local: test_logged_models.py / test_lease.py (extension exists
                           only for local runs: `--resume` refuses --workers > 1, sweeps
                           cannot be extended)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from conftest import arm_fault, sqlite_store, wait_for

pytestmark = pytest.mark.integration

MODES = ["local", "ray-train", "trial", "dist-trial"]


def modes(*slow: str) -> list:
    """MODES with the cells named in `slow` in the slow suite (`pytest -m slow`): every
    guarantee keeps its local cell in the fast suite (and a trial cell where Tune is what
    it is about); the cells that start a Ray Train worker group take minutes on 2 cores."""
    return [pytest.param(m, id=m, marks=pytest.mark.slow) if m in slow else m for m in MODES]
FIXED = {"dataset": "mnist-5k", "arch": "mlp", "mlp_width": 8, "latent_dim": 16, "batch_size": 256,
         "eval_samples": 100, "device": "cpu", "eval_budget": 0, "epochs": 2}


@pytest.fixture(scope="module")
def faults(local_ray):
    """The session's Ray (conftest.local_ray); this process (the local mode) reads the same
    faults as its workers."""
    import sys

    from conftest import FAULTS_DIR

    sys.path.insert(0, str(FAULTS_DIR))
    import gan_faults

    gan_faults.install(str(local_ray))
    yield local_ray
    for name in list(local_ray.iterdir()):
        name.unlink()


@pytest.fixture
def store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = sqlite_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def command(mode: str, folder: Path, **values) -> list[str]:
    """The CLI's arguments that train one run of FIXED (+ values) in `mode`."""
    params = {**FIXED, **values}
    if mode in ("local", "ray-train"):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in params.items() if k != "dataset"]  # no searched values here
        flags.append(f"--dataset={params['dataset']}")
        workers = ["--workers", "2", "--ray-storage", str(folder / "ray")] if mode == "ray-train" else []
        return ["train", "--experiment", "m", *workers, *flags]
    space = folder / "space.yaml"
    if not any(isinstance(v, dict) for v in params.values()):
        # one searched parameter with a single choice: the trial is exactly FIXED + values
        params["seed"] = {"type": "categorical", "choices": [params.get("seed", 0)]}
    space.write_text(yaml.safe_dump({"params": params}))
    workers = ["--workers-per-trial", "2", "--cpus-per-trial", "1"] if mode == "dist-trial" else []
    return ["sweep", "--space", str(space), "--trials", "1", "--concurrency", "1", "--scheduler", "none",
            "--experiment", "m", "--ray-storage", str(folder / "ray"), *workers]


def training_runs(client) -> list:
    exp = client.get_experiment_by_name("m")
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweep.role") != "parent"]


def main(args: list[str]) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(args)


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("mode", MODES)
def test_a_backbone_the_data_cannot_use_creates_no_run(mode, faults, store, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(70):
        Image.new("RGB", (32, 32), (i, 2 * i, 3 * i)).save(folder / f"{i}.png")
    # images without labels cannot train the classifier backbone: bad input, not a failed run
    rc = main(command(mode, tmp_path, dataset=f"folder:{folder}", backbone="classifier", arch="dcgan",
                      dcgan_width=8, batch_size=32))
    err = capsys.readouterr().err
    assert rc == 2 and "--backbone inception" in err and err.count("\n") == 1, err
    assert not (tmp_path / "mlflow.db").exists() or not training_runs(store)


@pytest.mark.parametrize("mode", modes("ray-train", "dist-trial"))
def test_a_diverged_run_is_failed_with_the_guards_reason_and_no_model(mode, faults, store, tmp_path, capsys):
    from pipelines.tracking.models import model_roles

    rc = main(command(mode, tmp_path, lr_g=1e300, epochs=1))
    assert rc == 1, capsys.readouterr().err  # a sweep with no finite FID exits 1 too
    (run,) = training_runs(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["stopped_reason"].startswith("health: ")
    assert "fid" not in run.data.metrics and model_roles(store, run.info.run_id) == set()
    assert "gan.lease.owner" not in run.data.tags  # released


STALE_TAGS = [
    pytest.param("local", id="local"),
    pytest.param("ray-train", id="ray-train", marks=pytest.mark.skip(
        reason="cannot happen: `train --resume` refuses --workers > 1, and a worker-group restart happens "
               "inside fit(), before the driver marks anything")),
    pytest.param("trial", id="trial", marks=pytest.mark.slow),
    pytest.param("dist-trial", id="dist-trial", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("mode", STALE_TAGS)
def test_a_run_that_failed_then_finished_keeps_no_stale_error(mode, faults, store, tmp_path, capsys):
    arm_fault(faults, "fail_at_eval", "2")  # its first life raises once, at its second eval (one checkpoint kept)
    rc = main(command(mode, tmp_path))
    if mode == "local":
        assert rc == 1, capsys.readouterr().err
        (failed,) = training_runs(store)
        assert failed.info.status == "FAILED" and "fail_at_eval" in failed.data.tags["error"]
        rc = main(["train", "--experiment", "m", "--resume", failed.info.run_id])
    assert rc == 0, capsys.readouterr().err  # a sweep: Tune retried the trial, which continued its own run
    (run,) = training_runs(store)
    assert run.info.status == "FINISHED"
    assert "error" not in run.data.tags and "stopped_reason" not in run.data.tags


@pytest.mark.parametrize("mode", modes("ray-train", "dist-trial"))
def test_a_streamed_run_that_crashed_goes_on_from_its_checkpoint_with_every_step_once(
        mode, faults, store, tmp_path, capsys):
    """data_mode=stream: mnist-5k is prepared once into the data dir and every process
    (each Ray Train worker its own slice) reads its batches from the shards. A crash at
    the second eval, then the mode's own way on (local: `train --resume`; Ray Train: the
    group restarts, --max-failures 1; a trial: Tune retries it), redoes the epoch in the
    same order."""
    from gan.prepared import open_prepared

    arm_fault(faults, "fail_at_eval", "2")
    args = command(mode, tmp_path, data_mode="stream", data_dir=str(tmp_path / "data"))
    rc = main(args + (["--max-failures", "1"] if mode == "ray-train" else []))
    if mode == "local":
        assert rc == 1, capsys.readouterr().err
        (failed,) = training_runs(store)
        rc = main(["train", "--experiment", "m", "--resume", failed.info.run_id])
    assert rc == 0, capsys.readouterr().err
    (run,) = training_runs(store)
    assert run.info.status == "FINISHED"
    per_epoch = 5000 // FIXED["batch_size"]
    assert [m.step for m in store.get_metric_history(run.info.run_id, "d_loss")] == list(range(1, 2 * per_epoch + 1))
    (copy,) = (tmp_path / "data" / "prepared").iterdir()  # the one prepared copy every process read
    manifest = open_prepared(copy)
    (used,) = run.inputs.dataset_inputs  # the run names the data it read: place, digest, count, shape
    assert used.dataset.digest == manifest.digest[:36]
    assert json.loads(used.dataset.source)["tags"]["path"] == str(manifest.path)
    assert json.loads(used.dataset.profile)["features_shape"] == [5000, 1, 28, 28]


@pytest.mark.parametrize("mode", modes("ray-train", "trial", "dist-trial"))
def test_a_running_run_refuses_a_concurrent_resume(mode, faults, store, tmp_path, capsys):
    arm_fault(faults, "hold")  # the first eval waits while this file exists
    results: dict[str, int] = {}

    def intruder() -> None:
        try:
            run_id = wait_for(lambda: (faults / "held").exists() and (faults / "held").read_text(), timeout=300)
            results["resume"] = main(["train", "--experiment", "m", "--resume", run_id])
            results["status_meanwhile"] = store.get_run(run_id).info.status == "RUNNING"
        finally:
            (faults / "hold").unlink(missing_ok=True)

    thread = threading.Thread(target=intruder)
    thread.start()
    try:
        rc = main(command(mode, tmp_path))
    finally:
        (faults / "hold").unlink(missing_ok=True)
        thread.join(timeout=60)
    (faults / "held").unlink(missing_ok=True)
    err = capsys.readouterr().err
    assert results == {"resume": 2, "status_meanwhile": True}, err
    assert "is being trained by" in err
    assert rc == 0, err
    (run,) = training_runs(store)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in store.get_metric_history(run.info.run_id, "d_loss")]
    assert steps == sorted(set(steps))  # one writer: no step twice
    assert "gan.lease.owner" not in run.data.tags


@pytest.mark.parametrize("mode", ["trial", pytest.param("dist-trial", marks=pytest.mark.slow)])  # only trials
def test_a_trial_the_scheduler_stops_is_killed_as_pruned_with_its_reason(mode, faults, store, tmp_path, capsys):
    # Seed 0 samples lr_g 1e-3, then 1e-7 (G frozen near its random init): ASHA stops the
    # second trial at its first rung. It is the sweep's last: Tune stops its actor rather
    # than reusing it, while the trial is still closing its run.
    args = command(mode, tmp_path, epochs=3, arch="dcgan", dcgan_width=8, batch_size=64, eval_samples=200,
                   lr_g={"type": "categorical", "choices": [1e-7, 1e-3]})
    args[args.index("--trials") + 1] = "2"
    args[args.index("--scheduler") + 1] = "asha"
    rc = main([*args, "--grace-period", "1", "--seed", "0"])
    assert rc == 0, capsys.readouterr().err
    runs = training_runs(store)
    pruned = [r for r in runs if r.info.status == "KILLED"]
    assert len(runs) == 2 and pruned, [(r.info.status, r.data.tags.get("error"), r.data.tags.get("stopped_reason"))
                                       for r in runs]
    for run in pruned:
        assert run.data.tags["stopped_reason"].startswith("tune: stopped by the scheduler after epoch 1")
        assert "error" not in run.data.tags and "gan.lease.owner" not in run.data.tags
        if mode == "trial":  # what its one epoch and eval cost (a distributed trial's rank 0 trains elsewhere)
            assert run.data.metrics["system/train_s"] > 0 and run.data.metrics["system/eval_s"] > 0
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    # Every trial closed its own run, the last one too (Tune stops its actor instead of
    # reusing it): only a trial logs its slot's figures; the driver, closing a run for a
    # trial cut off, does not.
    for run in runs:
        assert run.data.metrics["system/wall_s"] > 0, run.info.run_name


def test_a_run_taken_over_while_its_owner_was_frozen_stops_its_owner_and_keeps_the_new_lease(
        faults, store, tmp_path, capsys, monkeypatch):
    # Local mode: a heartbeat every 0.5 s here. The owner is held at its first eval while
    # "another process" takes the run over (its tags say so); at the next beat the owner
    # sees it, and its next write stops it: exit 1, one line, the new owner's lease kept.
    from pipelines.tracking import lease as leases

    monkeypatch.setattr(leases, "HEARTBEAT_S", 0.5)
    arm_fault(faults, "hold")
    seen: list[str] = []
    original = leases._lost_reason

    def lost_reason(*args):
        reason = original(*args)
        if reason:
            seen.append(reason)
        return reason

    monkeypatch.setattr(leases, "_lost_reason", lost_reason)

    def leases_seen() -> bool:
        return bool(seen)

    usurper = "otherhost:4242:1.00:cafe0000"

    def take_over() -> None:
        try:
            run_id = wait_for(lambda: (faults / "held").exists() and (faults / "held").read_text(), timeout=300)
            store.set_tag(run_id, "gan.lease.owner", usurper)
            store.set_tag(run_id, "gan.lease.heartbeat", "9999999999")
            # the owner's heartbeat thread has seen the new owner (it beats every 0.5 s here)
            wait_for(lambda: leases_seen(), timeout=30, every=0.2)
        finally:
            (faults / "hold").unlink(missing_ok=True)

    thread = threading.Thread(target=take_over)
    thread.start()
    try:
        rc = main(command("local", tmp_path, epochs=3))
    finally:
        (faults / "hold").unlink(missing_ok=True)
        thread.join(timeout=60)
    (faults / "held").unlink(missing_ok=True)
    err = capsys.readouterr().err
    assert rc == 1 and "stopped: " in err and "taken over by otherhost pid 4242" in err, err
    (run,) = training_runs(store)
    assert run.info.status == "RUNNING"  # the new owner's run: this process marks nothing
    assert run.data.tags["gan.lease.owner"] == usurper  # and releases nothing of it
