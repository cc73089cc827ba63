"""What a run kept on local disk while its tracking server was away, sent later exactly
once, against a real sqlite MLflow store: a kill mid-append leaves a torn last line that
a replay skips, every grid and every metric step lands once even when part of it had
landed before the server went away, nothing is sent into a run another process took over
meanwhile, nor from an outbox whose writer still runs, and an extended run keeps one best
and one final generator."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import store_with_run

from gan.config import make_config
from gan.models import build_models
from pipelines.errors import TrackingError, TrackingLost
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks, send_offline_writes
from pipelines.tracking.history import _GRID_FILE
from pipelines.tracking.models import run_models
from pipelines.tracking.opening import find_resumable
from pipelines.tracking.outbox import Outbox

SHAPE = (1, 28, 28)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GAN_PIPELINES_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def store(tmp_path):
    return store_with_run(tmp_path, "offline")


def metrics(*steps: int) -> dict:
    return {"kind": "metrics", "rows": [(s, {"d_loss": float(s), "g_loss": -float(s)}) for s in steps], "ts": 1}


def grid(step: int) -> np.ndarray:
    return np.full((16, 16), step, dtype=np.uint8)


def evaluation(epoch: int, step: int) -> dict:
    return {"kind": "eval", "epoch": epoch, "step": step, "grid": grid(step), "ts": 2,
            "metrics": {"fid": 100.0 / epoch}}


def events_file(outbox: Outbox) -> Path:
    return outbox.dir / "events.jsonl"


def test_a_torn_last_line_is_skipped_with_one_warning(capsys):
    outbox = Outbox("torn")
    outbox.open(None, None, "test")
    outbox.keep(metrics(1))
    outbox.keep(metrics(2))
    with open(events_file(outbox), "a") as f:
        f.write('{"kind": "metrics", "rows": [[3, {"d_lo')  # killed mid-append
    assert [e["rows"][0][0] for e in outbox.pending()] == [1, 2]
    assert outbox.size() == 2 and outbox.sent() == 0
    assert capsys.readouterr().err.count("warning") == 1
    outbox.keep(metrics(4))  # a later append is its own line, not glued to the torn one
    assert [e["rows"][0][0] for e in outbox.pending()] == [1, 2, 4]
    outbox.mark_sent(2)
    assert outbox.size() == 3 and outbox.sent() == 2


def test_a_torn_line_in_the_middle_is_an_error():
    outbox = Outbox("torn-middle")
    outbox.open(None, None, "test")
    good = json.dumps(metrics(1))
    events_file(outbox).write_text(f"{good}\n{{\"kind\": \"metr\n{good}\n")
    with pytest.raises(TrackingError, match="line 2"):
        outbox.pending()


def image_steps(client, run_id) -> Counter:
    found = (_GRID_FILE.match(Path(a.path).name) for a in client.list_artifacts(run_id, names.IMAGES_DIR))
    return Counter(int(m.group(1)) for m in found if m)


def metric_steps(client, run_id, key: str) -> Counter:
    return Counter(m.step for m in client.get_metric_history(run_id, key))


def test_a_replay_sends_every_grid_and_metric_step_exactly_once(store):
    client, run_id = store
    outbox = Outbox(run_id)  # as MlflowCallbacks keeps them while the server is away
    outbox.open(None, None, "test")
    for event in ({"kind": "grid", "epoch": 0, "step": 0, "grid": grid(0)}, metrics(1, 2, 3), evaluation(1, 3),
                  metrics(4, 5, 6), evaluation(2, 6)):
        outbox.keep(event)
    # What landed before the answers stopped coming: the untrained grid, and the grid of
    # the first eval (the server died between its grid and its metrics).
    client.log_image(run_id, grid(0), key=names.GRID_KEY, step=0)
    client.log_image(run_id, grid(3), key=names.GRID_KEY, step=3)

    send_offline_writes(client, run_id)

    assert image_steps(client, run_id) == Counter({0: 1, 3: 1, 6: 1})
    assert metric_steps(client, run_id, "d_loss") == Counter(range(1, 7))
    assert metric_steps(client, run_id, names.EPOCH) == Counter({3: 1, 6: 1})
    assert metric_steps(client, run_id, "fid") == Counter({3: 1, 6: 1})
    grids = sorted(Path(a.path).name for a in client.list_artifacts(run_id, names.GRIDS_DIR))
    assert grids == ["epoch_000.png", "epoch_001.png", "epoch_002.png"]
    assert not outbox.exists()


def test_a_writer_back_after_its_run_was_taken_over_sends_nothing_it_kept(store):
    """test_lease.py shows the TrackingLost; here: not one kept write reaches the run, and
    the outbox keeps them all."""
    client, run_id = store
    cfg = make_config({"arch": "mlp", "mlp_width": 8, "latent_dim": 16, "device": "cpu"})
    mine = "thishost:1111:1.00:mine0001"  # the lease this process trains the run under
    client.set_tag(run_id, names.LEASE_OWNER, mine)
    callbacks = MlflowCallbacks(client, run_id, cfg=cfg, image_shape=SHAPE, owner=mine)
    callbacks.outage.begin(0)  # the server went away: every write since is kept
    callbacks.outbox.open(cfg.to_dict(), SHAPE, "test")
    kept = [{"kind": "grid", "epoch": 0, "step": 0, "grid": grid(0)}, metrics(1, 2, 3),
            {"kind": "scored", "epoch": 1, "step": 3, "generator": build_models(cfg, SHAPE)[0], "improved": True,
             "final": False}, evaluation(1, 3)]
    for event in kept:
        callbacks.outbox.keep(event)
    # Meanwhile another process took the run over (this one's lease went stale: it could not beat).
    client.set_tag(run_id, names.LEASE_OWNER, "otherhost:4242:1.00:theirs01")
    client.set_tag(run_id, names.LEASE_HEARTBEAT, f"{time.time():.0f}")
    callbacks.outage.next_look = 0.0  # the next callback looks for the server, which is back

    with pytest.raises(TrackingLost, match="taken over by otherhost pid 4242"):
        callbacks.on_metrics([(4, {"d_loss": 4.0, "g_loss": -4.0})])

    assert metric_steps(client, run_id, "d_loss") == Counter() and metric_steps(client, run_id, "fid") == Counter()
    assert image_steps(client, run_id) == Counter() and client.list_artifacts(run_id, names.GRIDS_DIR) == []
    assert run_models(client, run_id) == []
    assert callbacks.outbox.size() == len(kept) and callbacks.outbox.sent() == 0


WRITER = """
import sys
from pipelines.tracking.outbox import Outbox
box = Outbox(sys.argv[1])
box.open(None, None, "test")
box.keep({"kind": "metrics", "rows": [(1, {"d_loss": 1.0}), (2, {"d_loss": 2.0})], "ts": 1})
print("kept", flush=True)
sys.stdin.read()  # trains on, offline, until the test closes its stdin
"""


def test_an_outbox_whose_writer_still_runs_is_not_sent_until_it_ends(store):
    client, run_id = store
    writer = subprocess.Popen([sys.executable, "-c", WRITER, run_id], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "kept"
        with pytest.raises(TrackingError, match=rf"pid {writer.pid} on this machine still trains it"):
            send_offline_writes(client, run_id)  # what a Ray Train rank 0 does first
        assert metric_steps(client, run_id, "d_loss") == Counter()
        assert Outbox(run_id).size() == 1 and Outbox(run_id).sent() == 0

        # Its lease looks stale (it could not beat while the server was away): `train
        # --resume` still refuses before taking the lease, and the run stays as it was.
        client.set_tag(run_id, names.LEASE_OWNER, f"{socket.gethostname()}:{writer.pid}:1.00:cafe0000")
        client.set_tag(run_id, names.LEASE_HEARTBEAT, f"{time.time() - 3600:.0f}")
        with pytest.raises(TrackingError, match=rf"pid {writer.pid} on this machine still trains it"):
            find_resumable(client, client.get_run(run_id).info.experiment_id, run_id)
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING" and names.ERROR not in run.data.tags
        assert run.data.tags[names.LEASE_OWNER].endswith(":cafe0000")
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
    send_offline_writes(client, run_id)  # its writer is gone: now it is sent
    assert metric_steps(client, run_id, "d_loss") == Counter({1: 1, 2: 1})
    assert not Outbox(run_id).exists()


def roles(client, run_id) -> list[str]:
    return sorted(r for m in run_models(client, run_id) for r in m.tags[names.MODEL_ROLE].split(","))


def test_an_extended_run_keeps_one_best_and_one_final_model(store):
    client, run_id = store
    cfg = make_config({"arch": "mlp", "mlp_width": 8, "latent_dim": 16, "device": "cpu"})
    generator = build_models(cfg, SHAPE)[0]
    first = MlflowCallbacks(client, run_id, cfg=cfg, image_shape=SHAPE)
    first.on_scored(1, 10, generator, improved=True, final=False)
    first.on_scored(2, 20, generator, improved=True, final=True)  # its last eval is its best
    assert roles(client, run_id) == ["best", "final"]

    extended = MlflowCallbacks(client, run_id, floor=20, cfg=cfg, image_shape=SHAPE)  # --epochs 4
    extended.on_scored(3, 30, generator, improved=True, final=False)
    assert roles(client, run_id) == ["best", "final"]
    assert {m.tags[names.MODEL_ROLE]: int(m.tags[names.MODEL_STEP]) for m in run_models(client, run_id)} == {
        "best": 30, "final": 20}
    extended.on_scored(4, 40, generator, improved=False, final=True)
    assert {m.tags[names.MODEL_ROLE]: int(m.tags[names.MODEL_STEP]) for m in run_models(client, run_id)} == {
        "best": 30, "final": 40}


def test_the_outbox_keeps_each_kind_in_order_resends_none_twice_and_keeps_few_checkpoints(tmp_path):
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


def test_a_read_on_the_training_path_while_the_server_is_away_is_none_and_starts_the_outage(monkeypatch, capsys):
    # A Ray Train rank 0 asks its run once an epoch whether its owner wants it stopped
    # (distributed/worker.py); with the server gone that read said MlflowException and
    # failed the whole run. It must read as "nothing asked" and keep what follows offline.
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nobody listens on: the server is gone
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    cb = MlflowCallbacks(MlflowClient(url), "0" * 32, owner="here:1:1.00:cafe0000")
    assert cb.read_tag(names.STOP_REQUESTED) is None
    assert cb.outage.active and "does not answer" in capsys.readouterr().err
    assert cb.read_tag(names.STOP_REQUESTED) is None  # still away: no call made, no error
    cb.sender.shutdown(wait=False)


def test_a_copy_check_panel_kept_offline_lands_beside_its_grid_and_is_named_on_its_model(store):
    from PIL import Image

    from pipelines.tracking.pictures import upscale

    client, run_id = store
    cfg = make_config({"arch": "mlp", "mlp_width": 8, "latent_dim": 16, "device": "cpu"})
    callbacks = MlflowCallbacks(client, run_id, cfg=cfg, image_shape=SHAPE)
    callbacks.outage.begin(0)  # the server went away: every write since is kept
    callbacks.outage.next_look = time.monotonic() + 3600  # and is not looked for again meanwhile
    callbacks.outbox.open(cfg.to_dict(), SHAPE, "test")
    callbacks.outbox.keep(metrics(1, 2, 3))  # the write it went away during
    panel = np.full((62, 482), 200, dtype=np.uint8)  # two rows of 16: samples above their neighbours
    callbacks.on_scored(1, 3, build_models(cfg, SHAPE)[0], improved=True, final=True)
    callbacks.on_copies(1, 3, panel)
    callbacks.on_eval(1, 3, grid(3), {"fid": 10.0, "copy_share": 0.25})
    assert client.list_artifacts(run_id, names.COPY_DIR) == []  # kept, not sent

    callbacks.outage.next_look = 0.0  # the server is back: the kept writes go out in order
    assert callbacks.send_kept() and not callbacks.outbox.exists()
    (model,) = run_models(client, run_id)
    assert model.tags[names.MODEL_COPY_PANEL] == "copy_check/epoch_001.png"
    sent = client.download_artifacts(run_id, "copy_check/epoch_001.png")
    assert np.array_equal(np.asarray(Image.open(sent)), upscale(panel))  # not the eval's grid at the same step
    assert [m.value for m in model.metrics if m.key == "copy_share"] == [0.25]
