"""The tracking server lost mid-run, with real processes: a real `mlflow server` killed
with SIGKILL while `gan-pipeline train` runs, and started again on the same store.

Training goes on meanwhile, its writes kept on local disk; whether the server is back
before the run ends (the kept writes are sent, exit 0) or not (exit 1 with one line, and
`--resume` sends them later), the run ends with every step and every eval logged exactly
once, its checkpoints and its models."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MlflowServer

pytestmark = pytest.mark.integration

FAST = ["--arch", "mlp", "--mlp-width", "8", "--latent-dim", "16", "--device", "cpu", "--batch-size", "256",
        "--eval-samples", "100", "--eval-budget", "0"]  # every epoch scored: the tests count evals
STEPS = 5000 // 256  # per epoch
EPOCHS = 40


@pytest.fixture
def server(tmp_path):
    s = MlflowServer(tmp_path)
    s.start()
    yield s
    s.kill()


class Train:
    """`gan-pipeline train` against the server, its stderr collected as it comes."""

    def __init__(self, cwd: Path, url: str, *args: str, wait_s: str = "120") -> None:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "GAN_PIPELINES_LEASE_TIMEOUT_S": "3",
               "GAN_PIPELINES_OFFLINE_WAIT_S": wait_s, "GAN_PIPELINES_CACHE": str(cwd / "cache")}
        env.pop("GAN_PIPELINES_DEBUG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while not any(text in line for line in self.err):
            assert time.time() < deadline, f"no {text!r} in: {''.join(self.err)[-2000:]}"
            assert self.proc.poll() is None or any(text in line for line in self.err), "".join(self.err)[-2000:]
            time.sleep(0.2)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc, "".join(self.err)


def _client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def _wait_for_first_eval(url: str, experiment: str) -> str:
    c = _client(url)
    deadline = time.time() + 180
    while time.time() < deadline:
        exp = c.get_experiment_by_name(experiment)
        runs = c.search_runs([exp.experiment_id]) if exp else []
        if runs and c.get_metric_history(runs[0].info.run_id, "fid"):
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError("no eval logged")


def _assert_whole(url: str, run_id: str) -> None:
    """Every step and eval exactly once, the checkpoints kept, a best and a final model."""
    c = _client(url)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED", run.data.tags
    losses = [m.step for m in c.get_metric_history(run_id, "d_loss")]
    assert losses == list(range(1, EPOCHS * STEPS + 1))
    evals = [m.step for m in c.get_metric_history(run_id, "fid")]
    assert evals == [STEPS * e for e in range(1, EPOCHS + 1)]
    checkpoints = [a.path for a in c.list_artifacts(run_id, "checkpoints")]
    assert f"checkpoints/epoch_{EPOCHS:05d}.pt" in checkpoints and len(checkpoints) <= 3
    grids = {a.path for a in c.list_artifacts(run_id, "grids")}
    assert f"grids/epoch_{EPOCHS:03d}.png" in grids
    roles = {m.tags.get("gan.role") for m in c.search_logged_models(experiment_ids=[run.info.experiment_id])}
    assert "final" in ",".join(r or "" for r in roles) and "best" in ",".join(r or "" for r in roles)


def test_a_server_back_mid_run_gets_everything_kept_meanwhile(server, tmp_path):
    t = Train(tmp_path, server.url, "--epochs", str(EPOCHS), "--experiment", "lost", *FAST)
    run_id = _wait_for_first_eval(server.url, "lost")
    server.kill()
    t.wait_for("does not answer")  # training goes on, writing to the outbox
    time.sleep(3)
    server.start()  # the same store, the same port
    rc, err = t.finish()
    assert rc == 0, err
    assert "writes of run" in err and "sent the" in err
    _assert_whole(server.url, run_id)
    assert not (tmp_path / "cache" / "offline" / run_id).exists()  # nothing left behind


def test_a_server_gone_past_the_end_exits_1_keeping_all_and_resume_sends_it(server, tmp_path):
    t = Train(tmp_path, server.url, "--epochs", str(EPOCHS), "--experiment", "lost", *FAST, wait_s="2")
    run_id = _wait_for_first_eval(server.url, "lost")
    server.kill()
    rc, err = t.finish()
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    outbox = tmp_path / "cache" / "offline" / run_id
    assert last.startswith("gan-pipeline train: stopped: the tracking server is away since step ")
    assert str(outbox) in last and f"--resume {run_id}" in last and len(last) <= 300
    assert (outbox / "events.jsonl").exists()

    server.start()
    rc, err = Train(tmp_path, server.url, "--resume", run_id).finish()
    assert rc == 0, err
    _assert_whole(server.url, run_id)
    assert not outbox.exists()


def test_the_outbox_keeps_each_kind_in_order_resends_none_twice_and_keeps_few_checkpoints(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from pipelines.tracking.outbox import Outbox

    monkeypatch.setenv("GAN_PIPELINES_CACHE", str(tmp_path))
    box = Outbox("r1")
    assert not box.exists()
    box.open({"epochs": 3}, (1, 28, 28), "MlflowException")
    grid = np.arange(64, dtype=np.uint8).reshape(8, 8)
    g = torch.nn.Linear(2, 3)
    box.keep({"kind": "metrics", "rows": [[1, {"d_loss": 0.5}], [2, {"d_loss": 0.25}]]})
    box.keep({"kind": "scored", "epoch": 1, "step": 2, "generator": g, "improved": True, "final": False})
    box.keep({"kind": "eval", "epoch": 1, "step": 2, "grid": grid, "metrics": {"fid": 3.5}})
    for epoch in (1, 2, 3):
        ckpt = tmp_path / f"c{epoch}.pt"
        torch.save({"epoch": epoch}, ckpt)
        box.keep({"kind": "checkpoint", "epoch": epoch, "step": 2 * epoch, "path": ckpt})
    box.drop_checkpoints(keep=1, also_keep="epoch_00001.pt")  # the newest, and the best eval's

    events = box.pending(lambda: torch.nn.Linear(2, 3))
    assert [e["kind"] for e in events] == ["metrics", "scored", "eval", "checkpoint", "checkpoint", "checkpoint"]
    assert events[0]["rows"] == [[1, {"d_loss": 0.5}], [2, {"d_loss": 0.25}]]
    assert torch.equal(events[1]["generator"].weight, g.weight)
    assert np.array_equal(events[2]["grid"], grid) and events[2]["metrics"] == {"fid": 3.5}
    assert [e["path"].exists() for e in events[3:]] == [True, False, True]
    assert box.meta()["image_shape"] == [1, 28, 28] and not box.writer_alive()  # this process

    box.mark_sent(4)  # a replay a second outage cut short resumes after what was sent
    assert [e["step"] for e in Outbox("r1").pending()] == [4, 6]
    box.clear()
    assert not box.exists()
