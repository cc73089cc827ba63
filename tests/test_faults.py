"""What survives what, with real processes and a real sqlite MLflow store: one owner per
run (the lease), resume rules, an eval a kill interrupted redone once, stale tags
cleared, a corrupt checkpoint skipped, and the faults a user meets at the door."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import arm_fault, fault_env, sqlite_store, wait_for

from gan.safe_files import md5_of

pytestmark = pytest.mark.integration

FAST = ["--arch", "mlp", "--mlp-width", "8", "--latent-dim", "16", "--device", "cpu", "--batch-size", "256",
        "--eval-samples", "100", "--eval-budget", "0"]  # every epoch scored: the tests count evals
STEPS = 5000 // 256  # per epoch
LEASE_S = "3"  # the lease goes stale 3 s after the owner's last heartbeat


def cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_store(cwd), "GAN_PIPELINES_LEASE_TIMEOUT_S": LEASE_S,
         **(env or {})}
    e.pop("GAN_PIPELINES_DEBUG", None)
    # SIGINT as a terminal's foreground process has it: a suite started in the background
    # (`.ci/run &`) passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    """The process's exit code and output; one that has not ended in `timeout` seconds is
    asked for its threads' stacks (faults/sitecustomize.py: SIGUSR1), killed, and failed
    with them."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGUSR1)
        time.sleep(2)
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"pid {p.pid} did not end in {timeout:.0f} s; its threads:\n{err[-6000:]}") from None
    return p.returncode, out, err


def client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_store(cwd))


def only_run(cwd: Path, experiment: str):
    c = client(cwd)
    (run,) = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    return run


def steps(cwd: Path, run_id: str, key: str) -> list[int]:
    return [m.step for m in client(cwd).get_metric_history(run_id, key)]


def test_an_eval_a_kill_interrupted_is_redone_once_and_a_running_run_has_one_owner(tmp_path):
    arm_fault(tmp_path / "faults", "die_at_eval", "2")
    p = cli(tmp_path, "train", "--epochs", "3", "--experiment", "k", *FAST, env=fault_env(tmp_path / "faults"))
    rc, _, err = finish(p)
    assert rc == -signal.SIGKILL, err  # died as eval 2 began: its losses logged, its scores not
    run = only_run(tmp_path, "k")
    rid = run.info.run_id
    assert run.info.status == "RUNNING" and steps(tmp_path, rid, "fid") == [STEPS]
    assert steps(tmp_path, rid, "d_loss")[-1] == 2 * STEPS

    # Two resumes at once, right after the kill: the dead owner's lease is stale at once
    # (its pid is gone), and the lease lets exactly one of them train the run.
    a, b = (cli(tmp_path, "train", "--resume", rid) for _ in range(2))
    (rc_a, _, err_a), (rc_b, _, err_b) = finish(a), finish(b)
    assert sorted([rc_a, rc_b]) == [0, 2], (err_a, err_b)
    loser = err_a if rc_a == 2 else err_b
    assert loser.count("\n") == 1 and ("pid" in loser or "taken by another resume" in loser)

    run = client(tmp_path).get_run(rid)
    assert run.info.status == "FINISHED"
    assert steps(tmp_path, rid, "fid") == [STEPS, 2 * STEPS, 3 * STEPS]  # eval 2 redone, once
    assert steps(tmp_path, rid, "d_loss") == list(range(1, 3 * STEPS + 1))  # no step twice
    assert "gan.lease.owner" not in run.data.tags  # released


@pytest.mark.slow  # three processes; the lifecycle matrix's local cells check the refusal and the stale error fast
def test_resume_refuses_a_live_run_and_clears_the_stale_error_of_an_interrupted_one(tmp_path):
    faults = tmp_path / "faults"
    p = cli(tmp_path, "train", "--epochs", "4", "--experiment", "live", *FAST, env=fault_env(faults))
    c = client(tmp_path)
    wait_for(lambda: c.get_experiment_by_name("live") and c.search_runs(
        [c.get_experiment_by_name("live").experiment_id], "tags.`gan.lease.owner` != ''"))
    rid = only_run(tmp_path, "live").info.run_id
    wait_for(lambda: steps(tmp_path, rid, "epoch"))  # a checkpoint exists
    arm_fault(faults, "hold")  # its next eval waits: it is still training whatever the machine's load
    wait_for(lambda: (faults / "held").exists())
    rc, _, err = finish(cli(tmp_path, "train", "--resume", rid))
    assert rc == 2 and err.count("\n") == 1 and f"pid {p.pid}" in err

    p.send_signal(signal.SIGINT)  # Ctrl-C: the run is KILLED with an error tag
    rc, _, err = finish(p)
    run = client(tmp_path).get_run(rid)
    assert rc == 130 and run.info.status == "KILLED" and "error" in run.data.tags, (rc, err[-2000:])
    # A lease left by an owner on another host (no pid to check there: only its heartbeat
    # tells) whose last beat is long past: stale at once, written old rather than waited out.
    c.set_tag(rid, "gan.lease.owner", "otherhost:4242:1700000000.00:gone0001")
    c.set_tag(rid, "gan.lease.heartbeat", f"{time.time() - 3600:.0f}")
    rc, _, err = finish(cli(tmp_path, "train", "--resume", rid))
    assert rc == 0, err
    run = client(tmp_path).get_run(rid)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert "gan.lease.owner" not in run.data.tags  # the resume took the lease over, then released it


@pytest.mark.slow  # four training processes; the fast suite keeps a kill and its resume above
def test_a_finished_run_is_extended_only_by_more_epochs_and_a_corrupt_checkpoint_is_skipped(tmp_path):
    from pipelines.tracking.models import run_models

    rc, _, err = finish(cli(tmp_path, "train", "--epochs", "2", "--keep-checkpoints", "0", "--experiment", "x",
                            *FAST))
    assert rc == 0, err
    rid = only_run(tmp_path, "x").info.run_id
    rc, _, err = finish(cli(tmp_path, "train", "--resume", rid))
    assert rc == 2 and "FINISHED (2 epochs)" in err and "--epochs" in err

    newest = tmp_path / "mlartifacts" / "x" / rid / "artifacts" / "checkpoints" / "epoch_00002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # torn
    rc, _, err = finish(cli(tmp_path, "train", "--resume", rid, "--epochs", "3"))
    assert rc == 0, err
    assert "epoch_00002.pt" in err and "resuming run" in err and "from epoch 1" in err
    assert "extending run" in err
    c = client(tmp_path)
    run = c.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["gan.extended_to_epochs"] == "3"
    assert steps(tmp_path, rid, "d_loss") == list(range(1, 3 * STEPS + 1))
    finals = [m for m in run_models(c, rid) if "final" in m.tags["gan.role"]]
    assert [m.tags["gan.epoch"] for m in finals] == ["3"]  # one final generator: the newest

    ckpts = newest.parent
    for f in ckpts.glob("*.pt"):
        f.write_bytes(b"not a checkpoint")
    rc, _, err = finish(cli(tmp_path, "train", "--resume", rid, "--epochs", "4"))
    *warnings, line = err.strip().splitlines()  # a warning per unreadable file, then the error
    assert rc == 2 and len(warnings) == 3 and all(w.startswith("warning: checkpoint") for w in warnings)
    assert line.startswith("gan-pipeline train: error:") and "no intact checkpoint left" in line
    assert c.get_run(rid).info.status == "FAILED"


def test_a_planted_cifar_pickle_never_runs(tmp_path, monkeypatch):
    import pickle

    import numpy as np

    import gan.builtin_datasets as data
    from gan.data import DataError, load_dataset

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in data.CIFAR10_MD5:
        (root / name).write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DataError, match="checksum"):
        load_dataset("cifar10", str(tmp_path))
    # Even a file whose checksum matched could only unpickle arrays.
    monkeypatch.setattr(data, "CIFAR10_MD5", {n: md5_of(root / n) for n in data.CIFAR10_MD5})
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()
    # ...and real batches (arrays and lists) load.
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [3, 5]}
    for name in data.CIFAR10_MD5:
        (root / name).write_bytes(pickle.dumps(batch))
    monkeypatch.setattr(data, "CIFAR10_MD5", {n: md5_of(root / n) for n in data.CIFAR10_MD5})
    loaded = load_dataset("cifar10", str(tmp_path))
    assert loaded.images.shape == (10, 3, 32, 32) and loaded.labels.tolist() == [3, 5] * 5
