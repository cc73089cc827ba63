"""What survives what, with real processes and a real sqlite MLflow store: one owner per
run (the lease), resume rules, an eval a kill interrupted redone once, stale tags
cleared, a corrupt checkpoint skipped, and the faults a user meets at the door."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import arm_fault, fault_env, wait_for

from gan.safe_files import md5_of

pytestmark = pytest.mark.integration

FAST = ["--arch", "mlp", "--mlp-width", "8", "--latent-dim", "16", "--device", "cpu", "--batch-size", "256",
        "--eval-samples", "100", "--eval-budget", "0"]  # every epoch scored: the tests count evals
STEPS = 5000 // 256  # per epoch
LEASE_S = "3"  # the lease goes stale 3 s after the owner's last heartbeat


def cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "GAN_PIPELINES_LEASE_TIMEOUT_S": LEASE_S,
         **(env or {})}
    e.pop("GAN_PIPELINES_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{cwd}/mlflow.db")


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


def test_resume_refuses_a_live_run_and_clears_the_stale_error_of_an_interrupted_one(tmp_path):
    p = cli(tmp_path, "train", "--epochs", "30", "--experiment", "live", *FAST)
    c = client(tmp_path)
    wait_for(lambda: c.get_experiment_by_name("live") and c.search_runs(
        [c.get_experiment_by_name("live").experiment_id], "tags.`gan.lease.owner` != ''"))
    rid = only_run(tmp_path, "live").info.run_id
    wait_for(lambda: steps(tmp_path, rid, "epoch"))  # a checkpoint exists
    rc, _, err = finish(cli(tmp_path, "train", "--resume", rid))
    assert rc == 2 and err.count("\n") == 1 and f"pid {p.pid}" in err

    p.send_signal(signal.SIGINT)  # Ctrl-C: the run is KILLED with an error tag
    rc, _, err = finish(p)
    run = client(tmp_path).get_run(rid)
    assert rc == 130 and run.info.status == "KILLED" and "error" in run.data.tags, (rc, err[-2000:])
    rc, _, err = finish(cli(tmp_path, "train", "--resume", rid))
    assert rc == 0, err
    run = client(tmp_path).get_run(rid)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags


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


# --------------------------------------------------------------------------- at the door


def _bomb(tmp_path: Path) -> list[str]:
    f = tmp_path / "bomb.yaml"
    # nine levels of nine aliases: 9^9 values if it were expanded
    f.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefghi", "bcdefghij", strict=True)))
    return ["train", "--config", str(f)]


def _png_bomb(tmp_path: Path) -> list[str]:
    from PIL import Image

    folder = tmp_path / "bombs"
    folder.mkdir()
    Image.new("1", (12000, 12000)).save(folder / "huge.png")  # 144 Mpx in a few kB
    return ["train", "--dataset", f"folder:{folder}", "--backbone", "inception"]


CASES = {
    "dead tracking server": (["train"], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "does not answer"),
    "unknown tracking scheme": (["train"], {"MLFLOW_TRACKING_URI": "foo://x"}, "scheme 'foo' is not supported"),
    "credentials never printed": (["train"], {"MLFLOW_TRACKING_URI": "http://me:s3cret@127.0.0.1:9"}, "me:***@"),
    "empty experiment": (["train", "--experiment", ""], {}, "--experiment"),
    "quotes in a sweep name": (["promote", "--sweep", "x' or '1'='1"], {}, "--sweep"),
    "ray address with one worker": (["train", "--ray-address", "127.0.0.1:1"], {}, "--workers 1"),
    "unreachable ray address for a sweep": (["sweep", "--ray-address", "127.0.0.1:1"], {}, "nothing answers"),
    "yaml alias bomb": (_bomb, {}, "YAML aliases"),
    "decompression bomb in a folder": (_png_bomb, {}, "too large to decode safely"),
    "bad search space": (["sweep", "--space", "nope.yaml"], {}, "cannot be read"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, case):
    args, env, expected = CASES[case]
    args = args(tmp_path) if callable(args) else args
    e = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", **env}
    e.pop("GAN_PIPELINES_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=tmp_path, env=e,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and len(done.stderr) <= 400 and expected in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert not (tmp_path / "ray_results").exists()


def test_a_planted_cifar_pickle_never_runs(tmp_path, monkeypatch):
    import pickle

    import numpy as np

    import gan.data as data
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
