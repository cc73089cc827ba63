"""`gan-pipeline train --from RUN_ID|models:/...` and `--warm`: a new run from another run's
resolved config (flags on top), linked to it by tags and a description; with --warm a
fine-tune of its best checkpoint. One tiny source run (real sqlite store, the CLI's own
entry function) serves every test of the module."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import sqlite_store

pytestmark = pytest.mark.integration

TINY = ["--arch", "mlp", "--mlp-width", "8", "--latent-dim", "16", "--batch-size", "256", "--eval-samples", "100",
        "--device", "cpu", "--eval-budget", "0"]  # 19 steps an epoch on mnist-5k, every epoch scored
STEPS_PER_EPOCH = 5000 // 256


def main(args: list[str]) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(args)


@dataclass
class Source:
    folder: Path
    uri: str
    client: object
    run_id: str
    experiment_id: str


@pytest.fixture(scope="module")
def source(tmp_path_factory, classifier_cache) -> Source:
    """A finished 2-epoch run (experiment src), and beside it runs --from must refuse."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("from")
    uri = sqlite_store(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["train", "--experiment", "src", "--epochs", "2", *TINY]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("src").experiment_id
    (run,) = client.search_runs([exp])
    return Source(folder, uri, client, run.info.run_id, exp)


@pytest.fixture
def at_source(source, monkeypatch, capsys) -> Source:
    monkeypatch.chdir(source.folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", source.uri)
    capsys.readouterr()
    return source


def new_run(client, experiment: str):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def logged_config(client, run_id: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text())


def checkpoint(client, run_id: str, epoch: int) -> dict:
    from gan.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        return load_checkpoint(client.download_artifacts(run_id, f"checkpoints/epoch_{epoch:05d}.pt", tmp))


def best_eval(client, run_id: str) -> tuple[int, int]:
    """(epoch, step) of the source's lowest FID, read from its metrics."""
    from pipelines.tracking.history import eval_epochs

    step = min(client.get_metric_history(run_id, "fid"), key=lambda m: m.value).step
    return eval_epochs(client, run_id)[step], step


def test_from_a_run_trains_a_new_run_of_its_config_with_the_flags_given_on_top(at_source):
    c, src = at_source.client, at_source.run_id
    assert main(["train", "--from", src, "--epochs", "1", "--seed", "3", "--experiment", "from-run"]) == 0

    run = new_run(c, "from-run")
    assert run.info.status == "FINISHED" and run.info.run_id != src
    assert logged_config(c, run.info.run_id) == {**logged_config(c, src), "epochs": 1, "seed": 3}
    assert run.data.params["seed"] == "3" and run.data.params["arch"] == "mlp"
    tags = run.data.tags
    assert tags["from_run_id"] == src and "warm_start_from" not in tags and "from_model_id" not in tags
    note = tags["mlflow.note.content"]
    assert f"(/#/experiments/{at_source.experiment_id}/runs/{src}?" in note  # a link to the source's page
    assert "`epochs=1`, `seed=3` changed" in note
    assert c.get_run(src).info.status == "FINISHED" and len(c.search_runs([at_source.experiment_id])) == 1
    # trained from scratch: its first step's G is its seed's, not the source's
    assert checkpoint(c, run.info.run_id, 1)["opt_g"]["state"][0]["step"].item() == STEPS_PER_EPOCH


def test_warm_starts_from_the_sources_best_checkpoint_on_its_own_clock(at_source, capsys):
    from gan.config import make_config
    from gan.models import build_models
    from gan.sampling import fixed_latents, generate, image_grid
    from pipelines.tracking.history import logged_grids
    from pipelines.tracking.pictures import upscale

    c, src = at_source.client, at_source.run_id
    # A learning rate too small to move any weight: what the run ends with is what it started from.
    assert main(["train", "--from", src, "--warm", "--epochs", "1", "--lr-g", "1e-30", "--lr-d", "1e-30",
                 "--experiment", "warm"]) == 0
    assert "fine-tuned from its checkpoint of epoch" in capsys.readouterr().out

    run = new_run(c, "warm")
    best_epoch, best_step = best_eval(c, src)
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert (tags["warm_start_from"], tags["warm_start_epoch"], tags["warm_start_step"]) == (
        src, str(best_epoch), str(best_step))
    assert f"checkpoints/epoch_{best_epoch:05d}.pt" in tags["mlflow.note.content"]

    start, end = checkpoint(c, src, best_epoch), checkpoint(c, run.info.run_id, 1)
    assert (end["epoch"], end["step"]) == (1, STEPS_PER_EPOCH)  # its own clock, from 0
    cfg = make_config(end["config"])
    G, D = build_models(cfg, (1, 28, 28))  # noqa: N806
    for net, key in ((G, "G"), (D, "D")):
        for name, _ in net.named_parameters():
            assert torch.equal(end[key][name], start[key][name]), (key, name)
    # Adam's moments and step count carried on from the source's, at this run's learning rate
    assert end["opt_g"]["state"][0]["step"].item() == start["opt_g"]["state"][0]["step"].item() + STEPS_PER_EPOCH
    assert end["opt_g"]["param_groups"][0]["lr"] == 1e-30

    # The run page's image slider starts at the source checkpoint's samples, not at noise.
    G.load_state_dict(start["G"])
    expected = upscale(image_grid(generate(G, fixed_latents(cfg.latent_dim, cfg.seed))))
    with tempfile.TemporaryDirectory() as tmp:
        first_step, first = logged_grids(c, run.info.run_id, tmp)[0]
    assert first_step == 0 and np.array_equal(first, expected)


def test_from_a_model_uri_uses_the_models_source_run(at_source):
    from pipelines.registry.origin import find_origin

    c, src = at_source.client, at_source.run_id
    assert main(["promote", "--experiment", "src", "--model-name", "from-test"]) == 0
    version = c.get_model_version_by_alias("from-test", "champion")
    model_id = version.source[len("models:/"):]  # promote registers the LoggedModel itself
    for uri in (f"models:/{model_id}", "models:/from-test/1"):
        assert find_origin(c, uri).run_id == src, uri

    assert main(["train", "--from", "models:/from-test@champion", "--epochs", "1", "--experiment", "via-uri"]) == 0
    run = new_run(c, "via-uri")
    assert run.info.status == "FINISHED"
    assert run.data.tags["from_run_id"] == src and run.data.tags["from_model_id"] == model_id
    assert "via `models:/from-test@champion`" in run.data.tags["mlflow.note.content"]


# --------------------------------------------------------------------------- bad sources


def _bare_run(c, src: Source) -> str:
    return c.create_run("0").info.run_id  # a run, but nothing gan-pipelines logged


def _sweep_parent(c, src: Source) -> str:
    return c.create_run("0", tags={"sweep.role": "parent", "sweep_name": "s"}).info.run_id


def _config_only(c, src: Source) -> str:
    exp = c.get_experiment_by_name("bare") or c.get_experiment(
        c.create_experiment("bare", artifact_location=str(src.folder / "bare")))
    run_id = c.create_run(exp.experiment_id).info.run_id
    c.log_text(run_id, yaml.safe_dump({"arch": "mlp", "epochs": 1}), "config.yaml")
    return run_id


BAD = {
    "unknown run id": (lambda c, s: "0123456789abcdef0123456789abcdef", [], "no such run in this store"),
    "a run that is no training run": (_bare_run, [], "has no config.yaml"),
    "a sweep's parent": (_sweep_parent, [], "is a sweep's parent, not a training run"),
    "a model uri that names nothing": (lambda c, s: "models:/missing@champion", [], "no such model"),
    "--warm from a run with no checkpoint": (_config_only, ["--warm"], "has no checkpoint to start from"),
    "--warm into other networks": (lambda c, s: s.run_id, ["--warm", "--mlp-width", "16"],
                                   "do not fit this config (mlp_width=16 (was 8))"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_source_is_one_line_exit_2_and_creates_no_run(case, at_source, capsys):
    from mlflow.entities import ViewType

    c = at_source.client
    make, flags, expected = BAD[case]
    ref = make(c, at_source)

    def everything() -> tuple:
        exps = c.search_experiments(view_type=ViewType.ALL)
        runs = c.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL)
        return sorted(e.name for e in exps), sorted(r.info.run_id for r in runs)

    before = everything()
    capsys.readouterr()
    assert main(["train", "--from", ref, *flags, "--experiment", "never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert everything() == before


@pytest.mark.slow  # a Ray Train worker group: a minute on 2 cores; the local cells above are the fast ones
def test_warm_on_ray_train_workers_starts_from_the_sources_best_checkpoint(at_source, local_ray):
    from gan.config import make_config
    from gan.models import build_models

    c, src = at_source.client, at_source.run_id
    assert main(["train", "--from", src, "--warm", "--epochs", "1", "--lr-g", "1e-30", "--lr-d", "1e-30",
                 "--workers", "2", "--ray-storage", str(at_source.folder / "ray"), "--experiment", "warm-ray"]) == 0
    run = new_run(c, "warm-ray")
    best_epoch, _ = best_eval(c, src)
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    assert (run.data.tags["from_run_id"], run.data.tags["warm_start_epoch"]) == (src, str(best_epoch))
    start, end = checkpoint(c, src, best_epoch), checkpoint(c, run.info.run_id, 1)
    assert (end["epoch"], end["step"]) == (1, STEPS_PER_EPOCH)
    G, D = build_models(make_config(end["config"]), (1, 28, 28))  # noqa: N806
    for net, key in ((G, "G"), (D, "D")):
        for name, _ in net.named_parameters():
            assert torch.equal(end[key][name], start[key][name]), (key, name)
    assert end["opt_g"]["state"][0]["step"].item() == start["opt_g"]["state"][0]["step"].item() + STEPS_PER_EPOCH
