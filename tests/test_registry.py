"""Promotion to the Model Registry and generation from it, against a real sqlite store and
a real `mlflow server` on 127.0.0.1. Runs are real runs holding real generator models;
their fid histories are written by the test so the right answer is known."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import sqlite_store
from mlflow.entities import Param

from gan.config import make_config
from gan.models import build_models
from pipelines.errors import TrackingError
from pipelines.registry.promote import promote
from pipelines.tracking.models import log_model
from pipelines.tracking.names import CHAMPION
from pipelines.tracking.store import client_for, ensure_experiment

pytestmark = pytest.mark.integration
LATENT = 8


def make_run(client, exp, parent, fids, *, dataset="mnist-5k", backbone="classifier", seed=0, status="FINISHED"):
    """A run whose evals scored `fids` (one per step); like a real run it keeps its best
    generator and its final one as LoggedModels, each eval's fid linked to its model."""
    from mlflow.entities import Metric

    from pipelines.tracking.store import config_params

    tags = {"mlflow.parentRunId": parent} if parent else {}
    run = client.create_run(exp, tags=tags)
    rid = run.info.run_id
    cfg = make_config({"dcgan_width": 4, "latent_dim": LATENT, "dataset": dataset, "backbone": backbone})
    client.log_batch(rid, params=[Param(k, v) for k, v in config_params(cfg).items()])
    torch.manual_seed(seed)
    G, _ = build_models(cfg, (1, 28, 28))
    with torch.no_grad():  # DCGAN's N(0, 0.02) init emits near-constant images; spread them
        for p in G.parameters():
            p.normal_(0, 0.5)
    best = min(range(len(fids)), key=fids.__getitem__)
    last = len(fids) - 1
    for i, v in enumerate(fids):
        roles = [r for r, on in (("best", i == best), ("final", i == last)) if on]
        model_id = (log_model(client, rid, cfg, G, (1, 28, 28), role=",".join(roles), epoch=i + 1, step=i + 1)
                    if roles else None)
        client.log_batch(rid, metrics=[Metric("fid", v, 0, i + 1, model_id=model_id)])
    client.log_batch(rid, metrics=[Metric("epoch", float(len(fids)), 0, len(fids))])
    client.set_terminated(rid, status)
    return rid


def sweep(client, name, fid_histories, **kw):
    """A sweep as `gan-pipeline sweep` tags it: the parent by name and role, each trial by
    name and parent (so the newest run with the sweep's name tag is a trial)."""
    exp = ensure_experiment(client, "sweeps")
    parent = client.create_run(exp, run_name=name, tags={"sweep_name": name, "sweep.role": "parent"}).info.run_id
    children = [make_run(client, exp, parent, f, seed=i, **kw) for i, f in enumerate(fid_histories)]
    for child in children:
        client.set_tag(child, "sweep_name", name)
    client.set_terminated(parent, "FINISHED")
    return parent, children


def plain_run(client, name, fids=None):
    """A run that is no sweep's parent though it is named like one; with `fids`, it has a
    child run holding a model that beats every sweep's."""
    exp = ensure_experiment(client, "sweeps")
    rid = client.create_run(exp, run_name=name).info.run_id
    if fids:
        make_run(client, exp, rid, fids)
    client.set_terminated(rid, "FINISHED")
    return rid


def check_promotion_flow(client):
    # Trial 1 has the best *best* fid (3.0) though its last value (9.0) is the worst.
    _, runs = sweep(client, "s1", [[20.0, 8.0], [30.0, 3.0, 9.0], [10.0, 5.0]])
    first = promote(client, sweep="s1", model_name="gen")
    assert first.candidate.run_id == runs[1] and first.candidate.value == 3.0
    assert first.champion_moved and "there was none" in first.reason
    mv = client.get_model_version_by_alias("gen", CHAMPION)
    assert mv.version == first.version and mv.run_id == runs[1]
    assert mv.tags["metric_value"] == "3.0" and mv.tags["dataset"] == "mnist-5k" and mv.tags["sweep"] == "s1"

    # A worse sweep registers a version but does not demote the champion.
    _, worse = sweep(client, "s2", [[7.0], [6.0]])
    second = promote(client, sweep="s2", model_name="gen")
    assert second.candidate.run_id == worse[1] and not second.champion_moved
    assert client.get_model_version_by_alias("gen", CHAMPION).version == first.version
    assert "champion stays" in client.get_model_version("gen", second.version).tags["promotion"]

    # A better one moves it; --force moves it back.
    sweep(client, "s3", [[1.5]])
    assert promote(client, sweep="s3", model_name="gen").champion_moved
    forced = promote(client, sweep="s2", model_name="gen", force=True)
    assert forced.champion_moved and forced.version == second.version  # same run: same version
    return first


def test_promote_picks_best_not_last_and_never_demotes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = client_for(sqlite_store(tmp_path))
    check_promotion_flow(client)


def test_promote_sweep_takes_the_tagged_parent_not_a_newer_run_named_like_it(tmp_path):
    client = client_for(sqlite_store(tmp_path))
    parent, runs = sweep(client, "s", [[6.0], [4.0]])
    plain_run(client, "s", fids=[0.5])  # started after the sweep: newest by name
    chosen = promote(client, sweep="s", model_name="gen")
    assert chosen.candidate.run_id == runs[1] and chosen.candidate.value == 4.0
    assert promote(client, sweep=parent, model_name="gen").candidate.run_id == runs[1]  # by run id too


def test_promote_names_the_sweeps_that_exist_when_none_has_that_name(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    uri = sqlite_store(tmp_path)
    client = client_for(uri)
    with pytest.raises(TrackingError, match="no sweep named 'nope'.*no sweep in this store"):
        promote(client, sweep="nope")
    for i in range(7):
        sweep(client, f"s{i}", [])
    plain_run(client, "ghost", fids=[1.0])
    with pytest.raises(TrackingError, match=r"no sweep named 'ghost'") as e:
        promote(client, sweep="ghost")
    listed = str(e.value).split("sweeps here (newest first): ")[1]
    assert len([n for n in ("s0", "s1", "s2", "s3", "s4", "s5", "s6") if n in listed]) == 5
    with pytest.raises(TrackingError, match="is not a sweep's parent run"):
        promote(client, sweep=plain_run(client, "other"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    capsys.readouterr()
    assert main(["promote", "--sweep", "ghost"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s6" in err


def test_promote_errors_are_clear(tmp_path):
    client = client_for(sqlite_store(tmp_path))
    with pytest.raises(TrackingError, match="no sweep named"):
        promote(client, sweep="nope")
    sweep(client, "empty", [[5.0]], status="FAILED")
    with pytest.raises(TrackingError, match="no finished run to promote"):
        promote(client, sweep="empty")
    sweep(client, "ok", [[5.0]])
    with pytest.raises(TrackingError, match="has metric 'kid'"):
        promote(client, sweep="ok", metric="kid")


def test_generate_cli_is_deterministic_through_the_champion_alias(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    uri = sqlite_store(tmp_path)
    client = client_for(uri)
    sweep(client, "g", [[4.0]])
    promote(client, sweep="g")
    # One real process (what a user runs), then the same command in-process for the rest.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    subprocess.run([sys.executable, "-m", "pipelines.cli", "generate", "-n", "6", "--seed", "3",
                    "--out", str(tmp_path / "a.png"), "--out-dir", str(tmp_path / "a")],
                   env=env, check=True, capture_output=True, cwd=tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for seed, name in ((3, "b"), (4, "c")):
        assert main(["generate", "-n", "6", "--seed", str(seed), "--out", str(tmp_path / f"{name}.png")]) == 0
    a, b, c = ((tmp_path / f"{n}.png").read_bytes() for n in "abc")
    assert a == b and b != c
    assert len(list((tmp_path / "a").glob("*.png"))) == 6
    capsys.readouterr()
    assert main(["generate", "--model", "models:/missing@champion"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be loaded" in err


def test_pyfunc_and_pytorch_faces_of_a_registered_generator(tmp_path):
    import mlflow
    import pandas as pd

    client = client_for(sqlite_store(tmp_path))
    sweep(client, "p", [[4.0]])
    promote(client, sweep="p")
    mlflow.set_tracking_uri(client.tracking_uri)  # models:/ URIs load through MLflow's global URI
    uri = f"models:/gan-generator@{CHAMPION}"
    model = mlflow.pyfunc.load_model(uri)
    images = model.predict(pd.DataFrame(), params={"num_images": 5, "seed": 1, "format": "array"})
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.uint8
    assert list(model.predict(pd.DataFrame([{"seed": 1, "num_images": 5}]))["index"]) == [0, 1, 2, 3, 4]  # PNGs
    assert model.metadata.signature.params.to_dict()[0]["name"] == "num_images"
    module = mlflow.pytorch.load_model(uri)
    assert module(torch.randn(2, LATENT)).shape == (2, 1, 28, 28)


def test_promotion_against_a_real_tracking_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = client_for(mlflow_server)
    first = check_promotion_flow(client)
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(mlflow_server)  # models:/ URIs load through MLflow's global URI
    images = mlflow.pyfunc.load_model(f"models:/gen@{CHAMPION}").predict(
        pd.DataFrame(), params={"num_images": 2, "format": "array"})
    assert images.shape == (2, 1, 28, 28)
    assert first.model_name == "gen"
