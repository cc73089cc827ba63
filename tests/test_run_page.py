"""What a run's page shows, against a real sqlite MLflow store: a sample grid at every
--eval-every epoch whether the eval budget scored it or not (the GIF says which), system
metrics for a run of seconds, and a Model metrics tab that opens on the model's metrics
(MLflow 3's UI puts any "a/b" metric in a section of its own, sorted before the
unprefixed ones, unless "a" is "system": those go to the System metrics tab)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import sqlite_store
from mlflow.tracking import MlflowClient
from PIL import Image

from gan.config import make_config
from gan.train import steps_per_epoch
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks
from pipelines.tracking.history import _GRID_FILE
from pipelines.tracking.pictures import _frame_label
from pipelines.tracking.resources import FIRST_SAMPLING_S, SAMPLING_S, _monitor, system_metrics
from pipelines.tracking.store import client_for
from pipelines.training.local import run_local

TINY = {"arch": "mlp", "mlp_width": 8, "latent_dim": 16, "batch_size": 64, "device": "cpu", "eval_samples": 200}


@pytest.fixture
def store(tmp_path):
    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    return client, client.create_run(client.create_experiment("page")).info.run_id, uri


def image_steps(client, run_id) -> Counter:
    found = (_GRID_FILE.match(Path(a.path).name) for a in client.list_artifacts(run_id, names.IMAGES_DIR))
    return Counter(int(m.group(1)) for m in found if m)


@pytest.mark.integration
def test_every_eval_every_epoch_has_a_grid_and_the_gif_marks_the_scored_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path))
    # A budget no eval fits in: only the last epoch is scored.
    cfg = make_config({**TINY, "epochs": 3, "eval_budget": 1e-9})
    out = run_local(cfg, experiment="grids", progress=False)
    client = client_for()
    run = client.get_run(out.run_id)
    per_epoch = steps_per_epoch(cfg, 5000)  # mnist-5k
    assert [m.step for m in client.get_metric_history(out.run_id, names.EPOCH)] == [3 * per_epoch]
    assert image_steps(client, out.run_id) == Counter({0: 1, per_epoch: 1, 2 * per_epoch: 1, 3 * per_epoch: 1})
    grids = sorted(Path(a.path).name for a in client.list_artifacts(out.run_id, names.GRIDS_DIR))
    assert grids == ["epoch_000.png", "epoch_001.png", "epoch_002.png", "epoch_003.png"]
    gif = Image.open(client.download_artifacts(out.run_id, names.PROGRESS_GIF, str(tmp_path)))
    assert gif.n_frames == 4
    # The Model metrics tab opens on the model's metrics: nothing but system/x has a "/".
    assert {k for k in run.data.metrics if "/" in k and not k.startswith(names.SYSTEM_PREFIX)} == set()
    assert names.EVAL_SHARE in run.data.metrics and "fid" in run.data.metrics


def test_the_gif_labels_say_which_frames_were_scored():
    epochs, fids = {30: 2}, {30: 12.345}  # one scored eval: epoch 2 at step 30
    assert _frame_label(0, epochs, fids) == "epoch 0 (untrained)"
    assert _frame_label(30, epochs, fids) == "epoch 2   FID 12.35"
    assert _frame_label(15, epochs, fids) == "epoch 1   not scored"
    assert _frame_label(45, epochs, fids) == "epoch 3   not scored"
    assert _frame_label(30, epochs, {}) == "epoch 2   scored"
    assert _frame_label(15, {}, {}) == "step 15   not scored"  # no eval tells the epoch's length


def test_a_grid_the_run_already_holds_is_not_logged_twice_after_a_resume(store):
    client, run_id, _ = store
    grid = np.full((16, 16), 7, dtype=np.uint8)
    first = MlflowCallbacks(client, run_id)
    first.on_grid(1, 8, grid)
    # Resumed from an older checkpoint: epoch 1 is redone, its grid held already (frames
    # come back from the run); this time the budget lets it score.
    resumed = MlflowCallbacks(client, run_id, floor=8, eval_floor=0, frames=list(first.frames))
    resumed.on_grid(1, 8, grid)
    resumed.on_eval(1, 8, grid, {"fid": 3.0})
    assert image_steps(client, run_id) == Counter({8: 1})
    assert [m.step for m in client.get_metric_history(run_id, names.EPOCH)] == [8]
    assert [s for s, _ in resumed.frames] == [8]


def test_the_untrained_grid_leaves_the_training_rng_where_it_was(store):
    import torch

    from gan.models import build_models
    from gan.sampling import fixed_latents, generate, image_grid
    from pipelines.tracking.pictures import upscale

    client, run_id, _ = store
    cfg = make_config({**TINY, "seed": 3})
    callbacks = MlflowCallbacks(client, run_id, cfg=cfg, image_shape=(1, 28, 28))
    torch.manual_seed(11)
    torch.rand(5)  # a training stream part way along
    before = torch.get_rng_state()
    callbacks.on_metrics([(1, {"d_loss": 1.0})])  # the first rows: the grid of the untrained G at step 0
    assert torch.equal(torch.get_rng_state(), before)
    # still train()'s untrained generator: cfg.seed, then build_models; the fixed latents
    torch.manual_seed(cfg.seed)
    untrained = build_models(cfg, (1, 28, 28))[0]
    assert callbacks.frames[0][0] == 0
    assert np.array_equal(callbacks.frames[0][1], upscale(image_grid(generate(untrained, fixed_latents(16, 3)))))


def test_a_run_of_seconds_has_system_metrics_and_a_last_sample(store):
    client, run_id, uri = store
    with system_metrics(run_id, uri):
        time.sleep(1.5)
    assert any(k.startswith(names.SYSTEM_PREFIX) for k in client.get_run(run_id).data.metrics)
    # Shorter than one sampling interval: only the last sample, taken as the block ends.
    short = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    with system_metrics(short, uri):
        time.sleep(0.2)
    history = client.get_metric_history(short, "system/cpu_utilization_percentage")
    assert [m.step for m in history] == [0]


def test_the_sampling_interval_grows_with_the_run_and_the_environment_wins(store, monkeypatch):
    _, run_id, uri = store
    monitor = _monitor(run_id, uri, resumed=False)
    assert monitor.sampling_interval == FIRST_SAMPLING_S
    monitor.started -= 120
    assert FIRST_SAMPLING_S < monitor.sampling_interval < SAMPLING_S
    monitor.started -= 3600
    assert monitor.sampling_interval == SAMPLING_S
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "7")
    assert _monitor(run_id, uri, resumed=False).sampling_interval == 7
