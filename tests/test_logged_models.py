"""Scored == shipped, against a real sqlite MLflow store: a run keeps its best and final
generators as MLflow 3 LoggedModels with their own scores, re-evaluating a kept model
reproduces its logged score, checkpoints follow the retention policy, and promote
refuses to rank scores that cannot be compared."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from conftest import sqlite_store
from mlflow.exceptions import MlflowException

from gan.config import make_config
from pipelines.errors import TrackingError
from pipelines.registry.lookup import champion_version, resolve_model
from pipelines.registry.promote import promote
from pipelines.tracking.models import run_models
from pipelines.tracking.store import client_for
from pipelines.training.local import run_local

pytestmark = pytest.mark.integration

SMALL = {"arch": "dcgan", "dcgan_width": 8, "latent_dim": 16, "device": "cpu", "eval_samples": 200,
         "batch_size": 128, "eval_budget": 0}  # every epoch scored: the tests count evals


def train(tmp_path, monkeypatch, experiment: str, **overrides):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path))
    out = run_local(make_config({**SMALL, **overrides}), experiment=experiment, progress=False)
    return client_for(), out


def evaluate_elsewhere(tmp_path, client, model_uri: str, run_id: str) -> tuple[str, dict[str, float]]:
    """`gan-pipeline evaluate --model URI --log` in a process of its own against the same
    store: what it printed, and the scores it logged to the model's source run (at full
    precision; the printed table has 6 digits)."""
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "evaluate", "--model", model_uri, "--log"],
                          cwd=tmp_path, env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"logged to run {run_id} as eval_classifier_*" in done.stdout, done.stdout
    prefix = "eval_classifier_"
    return done.stdout, {k[len(prefix):]: v for k, v in client.get_run(run_id).data.metrics.items()
                         if k.startswith(prefix)}


def linked(model, key: str = "fid") -> float:
    (value,) = [m.value for m in model.metrics if m.key == key]
    return value


@pytest.mark.parametrize("ema", [0.0, pytest.param(0.999, marks=pytest.mark.slow)], ids=["batchnorm-G-no-ema", "ema"])
def test_kept_models_carry_their_own_scores_and_reevaluating_them_reproduces_them(tmp_path, monkeypatch, ema):
    # g_norm batch with --ema 0: the scored generator is the training G itself, the case
    # where scoring in train mode would have scored a different function than ships.
    client, out = train(tmp_path, monkeypatch, "scores", epochs=3, ema=ema, keep_checkpoints=1)
    rid = out.run_id
    models = run_models(client, rid)
    roles = sorted(r for m in models for r in m.tags["gan.role"].split(","))
    assert roles == ["best", "final"] and len(models) in (1, 2)

    fid_at = {m.step: m.value for m in client.get_metric_history(rid, "fid")}
    for m in models:
        # the value linked to the model is the run's fid at the step the model was kept
        assert linked(m) == fid_at[int(m.tags["gan.step"])]
        assert m.source_run_id == rid and m.tags["backbone"] == "classifier" and m.tags["eval_samples"] == "200"
    best = next(m for m in models if "best" in m.tags["gan.role"])
    assert linked(best) == min(fid_at.values())
    ranked = client.search_logged_models([client.get_run(rid).info.experiment_id],
                                         order_by=[{"field_name": "metrics.fid", "ascending": True}])
    assert ranked[0].model_id == best.model_id

    # runs:/RUN/generator still names the final generator; the CLI printed its models:/ URI
    final = next(m for m in models if "final" in m.tags["gan.role"])
    assert resolve_model(client, f"runs:/{rid}/generator")[0].model_id == final.model_id
    assert out.model_uri == f"models:/{final.model_id}"

    # retention: the newest checkpoint, plus the best eval's when that is an older one
    kept = sorted(a.path.rsplit("/", 1)[1] for a in client.list_artifacts(rid, "checkpoints"))
    best_ckpt = f"epoch_{int(best.tags['gan.epoch']):05d}.pt"
    assert kept == sorted({"epoch_00003.pt", best_ckpt})

    # Reproduced, not recomputed: a fresh process that knows only the best model's URI (an
    # older generator than the final one whenever the last eval did not improve) loads it
    # from the store and, with the settings it defaults to, gives the scores linked to it.
    out, again = evaluate_elsewhere(tmp_path, client, f"models:/{best.model_id}", rid)
    assert f"models:/{best.model_id} vs mnist-5k (classifier, 200 samples, seed 0)" in out
    assert "logged in training" in out.split("\nfid ", 1)[1].splitlines()[0]
    assert again["fid"] == pytest.approx(linked(best), rel=1e-6)
    assert again["kid"] == pytest.approx(linked(best, "kid"), rel=1e-6, abs=1e-9)

    # The copy check goes with the model too: its share, reproduced, and its panel in the run.
    assert 0 <= linked(best, "copy_share") < 0.5
    assert again["copy_share"] == linked(best, "copy_share")
    assert again["copy_ratio"] == pytest.approx(linked(best, "copy_ratio"), rel=1e-6)
    panel = best.tags["gan.copy_panel"]
    assert panel == f"copy_check/epoch_{int(best.tags['gan.epoch']):03d}.png"
    assert panel in {a.path for a in client.list_artifacts(rid, "copy_check")}


@pytest.mark.slow  # tests/test_sweep.py reproduces a promoted champion's score in the fast suite
def test_promote_registers_the_ranked_model_and_its_value_reproduces(tmp_path, monkeypatch):
    client, _ = train(tmp_path, monkeypatch, "champ", epochs=2)
    result = promote(client, experiment="champ", model_name="g")
    version = champion_version(client, "g")
    assert version.tags["model_id"] == result.candidate.model_id
    assert version.source == f"models:/{result.candidate.model_id}"
    assert f"model {result.candidate.model_id}" in result.line("fid")
    # A fresh process resolves the alias to that model and reproduces the value it ranked.
    printed, again = evaluate_elsewhere(tmp_path, client, "models:/g@champion", version.run_id)
    assert "models:/g@champion vs mnist-5k (classifier, 200 samples, seed 0)" in printed
    assert "logged in training" in printed.split("\nfid ", 1)[1].splitlines()[0]
    assert again["fid"] == pytest.approx(float(version.tags["metric_value"]), rel=1e-6)


def test_promote_refuses_to_rank_scores_of_different_kinds_and_names_the_filter(tmp_path, monkeypatch):
    client, _ = train(tmp_path, monkeypatch, "mixed", epochs=1)
    train(tmp_path, monkeypatch, "mixed", epochs=1, eval_samples=100)
    with pytest.raises(TrackingError, match=r"cannot be compared.*pick one with --eval-samples") as err:
        promote(client, experiment="mixed", model_name="m")
    assert "eval_samples=200 (1 model)" in str(err.value) and "eval_samples=100 (1 model)" in str(err.value)
    assert "dataset" not in str(err.value)  # only what differs is named
    picked = promote(client, experiment="mixed", model_name="m", where={"eval_samples": "100"})
    assert picked.candidate.model.tags["eval_samples"] == "100" and math.isfinite(picked.candidate.value)


def test_an_unreachable_registry_is_an_error_not_an_empty_one(monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    dead = MlflowClient("http://127.0.0.1:9")  # discard port: nothing listens
    # MLflow's own answer for a refused connection goes through untouched: not None (no
    # champion), not a user error, not some other crash of the lookup.
    with pytest.raises(MlflowException, match=r"registered-models/alias failed with exception .*Connection refused"
                       ) as err:
        champion_version(dead, "gan-generator")
    assert type(err.value) is MlflowException and err.value.error_code == "INTERNAL_ERROR"
    assert not isinstance(err.value, TrackingError)


def log_copier_run(client, experiment: str, data) -> tuple[str, str]:
    """A finished run whose generator hands back training images verbatim, logged as
    training logs a best model (MlflowCallbacks: the model, its copy-check panel, its
    scores): (run id, model id)."""
    from gan.metrics import Evaluator
    from gan.metrics.copies import CopyingGenerator
    from gan.sampling import fixed_latents, generate, image_grid
    from pipelines.tracking.callbacks import MlflowCallbacks

    cfg = make_config({**SMALL, "epochs": 1})
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    copier = CopyingGenerator(data.images[1000:2000])
    evaluator = Evaluator(data, cfg.backbone, cfg.eval_samples, seed=cfg.seed)
    callbacks = MlflowCallbacks(client, run_id, cfg=cfg, image_shape=data.shape)
    callbacks.on_scored(1, 1, copier, improved=True, final=True)
    callbacks.on_copies(1, 1, evaluator.copy_panel(copier, cfg.latent_dim))
    grid = image_grid(generate(copier, fixed_latents(cfg.latent_dim, cfg.seed)))
    callbacks.on_eval(1, 1, grid, evaluator(copier, cfg.latent_dim))
    callbacks.settle()
    client.set_terminated(run_id, "FINISHED")
    return run_id, run_models(client, run_id)[0].model_id


def test_promote_max_copy_refuses_a_copier_and_registers_a_trained_gan(tmp_path, monkeypatch, mnist5k, capsys):
    from pipelines.cli import main
    from pipelines.registry.evaluate import EvalRequest, evaluate
    from pipelines.tracking.store import global_tracking_uri

    client, _ = train(tmp_path, monkeypatch, "trained", epochs=1)
    copier_run, copier = log_copier_run(client, "copied", mnist5k)
    capsys.readouterr()

    # The copier ranks first by fid (its images are real digits): --max-copy refuses it.
    assert main(["promote", "--experiment", "copied", "--model-name", "g", "--max-copy", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--max-copy 0.5: model {copier} (run {copier_run}) copies 100% " in err, err
    assert "nothing registered" in err and client.search_registered_models() == []

    # Without a limit it is registered, and the line says what it is and where its panel is.
    line = promote(client, experiment="copied", model_name="g").line("fid")
    assert f"copies: 100% of its samples are closer to a training image than training images are to each " \
           f"other (looks like a copier), panel copy_check/epoch_001.png in run {copier_run}" in line, line

    # A GAN trained for an epoch passes the same limit.
    assert main(["promote", "--experiment", "trained", "--model-name", "h", "--max-copy", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "registered h v1" in out and "copies: " in out and "looks like a copier" not in out, out
    assert float(champion_version(client, "h").tags["copy_share"]) <= 0.5

    # The copier's logged model, loaded back from the store, re-evaluates to what it logged.
    with global_tracking_uri(client.tracking_uri):
        again = evaluate(client, EvalRequest(f"models:/{copier}", None, None, None, None, None, None))
    assert again.scores["copy_share"] == again.logged["copy_share"] == 1.0
