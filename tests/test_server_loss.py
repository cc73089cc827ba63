"""The tracking server lost mid-run, with real processes: a real `mlflow server` killed
with SIGKILL while `gan-pipeline train` runs, and started again on the same store.

Training goes on meanwhile, its writes kept on local disk; whether the server is back
before the run ends (the kept writes are sent, exit 0) or not (exit 1 with one line, and
`--resume` sends them later), the run ends with every step and every eval logged exactly
once, its checkpoints and its models."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MlflowServer, cache_for, store_with_run, wait_for

pytestmark = pytest.mark.integration

FAST = ["--arch", "mlp", "--mlp-width", "8", "--latent-dim", "16", "--device", "cpu", "--batch-size", "256",
        "--eval-samples", "100", "--eval-budget", "0"]  # every epoch scored: the tests count evals
STEPS = 5000 // 256  # per epoch
EPOCHS = 40


@pytest.fixture(autouse=True)
def no_train_left():
    yield
    for proc in Train.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    Train.started.clear()


@pytest.fixture
def server(tmp_path, classifier_cache):
    cache_for(tmp_path / "cache", classifier_cache)  # the cache Train gives its processes
    s = MlflowServer(tmp_path)
    s.start()
    yield s
    s.kill()


class Train:
    """`gan-pipeline train` against the server, its stderr collected as it comes."""

    started: list[subprocess.Popen] = []  # killed after each test (a failed one leaves its child)

    def __init__(self, cwd: Path, url: str, *args: str, wait_s: str = "120") -> None:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "GAN_PIPELINES_LEASE_TIMEOUT_S": "3",
               "GAN_PIPELINES_OFFLINE_WAIT_S": wait_s, "GAN_PIPELINES_CACHE": str(cwd / "cache")}
        env.pop("GAN_PIPELINES_DEBUG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        Train.started.append(self.proc)
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


def _wait_for_first_eval(url: str, experiment: str, train: Train) -> str:
    """The run's id once its first eval is logged (the classifier the evals score with is
    trained first, in this test's fresh cache: minutes on a busy machine)."""
    c = _client(url)

    def first_eval() -> str | None:
        assert train.proc.poll() is None, "".join(train.err)[-2000:]
        exp = c.get_experiment_by_name(experiment)
        runs = c.search_runs([exp.experiment_id]) if exp else []
        return runs[0].info.run_id if runs and c.get_metric_history(runs[0].info.run_id, "fid") else None

    return wait_for(first_eval, timeout=600)


def _kept_kinds(events: Path) -> list[str]:
    """The kinds of the events an outbox holds so far (a line being appended is skipped)."""
    if not events.exists():
        return []
    kinds = []
    for line in events.read_text().splitlines():
        with contextlib.suppress(ValueError):
            kinds.append(json.loads(line)["kind"])
    return kinds


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


@pytest.mark.slow  # the outbox replays below run in-process against a real store
def test_a_server_back_mid_run_gets_everything_kept_meanwhile(server, tmp_path):
    t = Train(tmp_path, server.url, "--epochs", str(EPOCHS), "--experiment", "lost", *FAST)
    run_id = _wait_for_first_eval(server.url, "lost", t)
    server.kill()
    t.wait_for("does not answer")  # training goes on, writing to the outbox
    events = tmp_path / "cache" / "offline" / run_id / "events.jsonl"
    # ...until the outbox holds an eval and what the run did after it: then the server is back
    wait_for(lambda: "eval" in _kept_kinds(events)[:-1], timeout=180)
    assert t.proc.poll() is None, "".join(t.err)[-2000:]
    server.start()  # the same store, the same port
    rc, err = t.finish()
    assert rc == 0, err
    assert "writes of run" in err and "sent the" in err
    _assert_whole(server.url, run_id)
    assert not (tmp_path / "cache" / "offline" / run_id).exists()  # nothing left behind


@pytest.mark.slow  # the outbox replays below run in-process against a real store
def test_a_server_gone_past_the_end_exits_1_keeping_all_and_resume_sends_it(server, tmp_path):
    t = Train(tmp_path, server.url, "--epochs", str(EPOCHS), "--experiment", "lost", *FAST, wait_s="2")
    run_id = _wait_for_first_eval(server.url, "lost", t)
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
    """Kept in order, payloads intact, old checkpoints dropped; and a replay (what --resume
    runs first) into a real sqlite store writes none of the writes again that reached the
    store though their answers never came back: each metric step, eval, grid and model once."""
    from collections import Counter

    import numpy as np
    import torch

    from gan.config import make_config
    from gan.models import build_models
    from pipelines.tracking import names
    from pipelines.tracking.callbacks import MlflowCallbacks, send_offline_writes
    from pipelines.tracking.history import _GRID_FILE
    from pipelines.tracking.models import run_models
    from pipelines.tracking.outbox import Outbox

    monkeypatch.setenv("GAN_PIPELINES_CACHE", str(tmp_path / "cache"))
    client, run_id = store_with_run(tmp_path, "outbox")
    shape = (1, 28, 28)
    cfg = make_config({"arch": "mlp", "mlp_width": 8, "latent_dim": 16, "device": "cpu", "keep_checkpoints": 1})
    g = build_models(cfg, shape)[0]

    def rows(*steps: int) -> list:
        return [[s, {"d_loss": s / 8, "g_loss": -s / 8}] for s in steps]

    def grid(step: int) -> np.ndarray:
        return np.full((32, 32), 40 * step, dtype=np.uint8)

    def checkpoint(epoch: int) -> dict:
        path = tmp_path / f"c{epoch}.pt"
        torch.save({"epoch": epoch}, path)
        return {"kind": "checkpoint", "epoch": epoch, "step": 2 * epoch, "path": path}

    def scored(epoch: int, improved: bool, final: bool) -> dict:
        return {"kind": "scored", "epoch": epoch, "step": 2 * epoch, "generator": g, "improved": improved,
                "final": final}

    def evaluation(epoch: int, fid: float) -> dict:
        return {"kind": "eval", "epoch": epoch, "step": 2 * epoch, "grid": grid(2 * epoch), "ts": epoch,
                "metrics": {"fid": fid}}

    events = [{"kind": "metrics", "rows": rows(1, 2), "ts": 1}, scored(1, True, False), evaluation(1, 3.5),
              checkpoint(1), {"kind": "metrics", "rows": rows(3, 4), "ts": 2}, evaluation(2, 4.5), checkpoint(2),
              {"kind": "metrics", "rows": rows(5, 6), "ts": 3}, scored(3, False, True), evaluation(3, 5.5),
              checkpoint(3)]
    box = Outbox(run_id)
    assert not box.exists()
    box.open(cfg.to_dict(), shape, "MlflowException")
    for event in events:
        box.keep(event)
        if event["kind"] == "checkpoint":
            box.drop_checkpoints(keep=1, also_keep="epoch_00001.pt")  # the newest, and the best eval's

    pending = box.pending(lambda: build_models(cfg, shape)[0])
    assert [e["kind"] for e in pending] == [e["kind"] for e in events]
    assert pending[0]["rows"] == rows(1, 2)
    kept_g = pending[1]["generator"].state_dict()
    assert all(torch.equal(kept_g[k], v) for k, v in g.state_dict().items())
    assert np.array_equal(pending[2]["grid"], grid(2)) and pending[2]["metrics"] == {"fid": 3.5}
    assert [e["path"].exists() for e in pending if e["kind"] == "checkpoint"] == [True, False, True]
    assert box.meta()["image_shape"] == [1, 28, 28] and not box.writer_alive()  # this process
    box.mark_sent(8)  # a replay a second outage cut short resumes after what was sent
    assert [e["step"] for e in Outbox(run_id).pending(lambda: build_models(cfg, shape)[0])] == [6, 6, 6]
    box.mark_sent(0)

    # What reached the store though the process never learned it (each write's answer was
    # lost, so the outbox kept it too), written as the run writes them: the first metric
    # batch, the epoch-1 model and eval (grid, then scores), the first half of the next
    # batch, and the final model, whose eval never landed.
    live = MlflowCallbacks(client, run_id, cfg=cfg, image_shape=shape)
    for event in (events[0], events[1], events[2], {**events[4], "rows": rows(3)}, events[8]):
        live._send(event)
    final_id = live.model_at[1]

    send_offline_writes(client, run_id)

    def counted(key: str) -> Counter:
        return Counter(m.step for m in client.get_metric_history(run_id, key))

    assert counted("d_loss") == counted("g_loss") == Counter(range(1, 7))
    assert counted(names.EPOCH) == counted("fid") == Counter({2: 1, 4: 1, 6: 1})
    assert [m.value for m in client.get_metric_history(run_id, "fid")] == [3.5, 4.5, 5.5]
    found = (_GRID_FILE.match(Path(a.path).name) for a in client.list_artifacts(run_id, names.IMAGES_DIR))
    assert Counter(int(m.group(1)) for m in found if m) == Counter({2: 1, 4: 1, 6: 1})  # the slider's images
    assert sorted(Path(a.path).name for a in client.list_artifacts(run_id, names.GRIDS_DIR)) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]
    models = run_models(client, run_id)
    assert sorted((int(m.tags[names.MODEL_STEP]), m.tags[names.MODEL_ROLE]) for m in models) == [
        (2, "best"), (6, "final")]
    assert final_id in {m.model_id for m in models}  # the model that landed is kept, not logged again
    # ...and the replayed eval's scores are linked to it
    assert [(m.key, m.step) for m in client.get_logged_model(final_id).metrics if m.key == "fid"] == [("fid", 6)]
    kept = [Path(a.path).name for a in client.list_artifacts(run_id, names.CHECKPOINT_DIR)]
    # keep_checkpoints 1: the newest, and the best eval's (epoch 1), which the replay learns from the log
    assert sorted(kept) == ["epoch_00001.pt", "epoch_00003.pt"]
    assert not box.exists()
