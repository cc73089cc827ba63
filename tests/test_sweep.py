"""`gan-pipeline sweep` end to end: real Ray Tune + Optuna + MLflow on mnist-5k with tiny
trials. The in-process tests share one Ray session; the resume test runs the CLI as a
separate driver process and kills it mid-sweep."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import sqlite_store, wait_for

from pipelines.tracking import names
from pipelines.tracking.models import model_roles

pytestmark = pytest.mark.integration

TINY = {
    "dataset": "mnist-5k", "epochs": 2, "eval_samples": 200, "latent_dim": 16,
    "batch_size": 64, "device": "cpu", "eval_budget": 0,  # every epoch scored: the tests count evals
}


def _write_space(folder: Path, name: str, params: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"params": {**TINY, **params}}))
    return path


@pytest.fixture
def ray_session(local_ray):
    """The session's Ray (conftest.local_ray, loopback only): an in-process sweep uses it."""
    return local_ray


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The folder a sweep runs in with the product's default store (./mlflow.db), made
    already migrated (conftest.sqlite_store)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sqlite_store(tmp_path)
    return tmp_path


def _sweep(workdir: Path, space: Path, **options):
    from pipelines.sweep.driver import run_sweep
    from pipelines.sweep.options import SweepOptions

    opts = SweepOptions(space=str(space), storage_path=str(workdir / "ray_results"), **options)
    return run_sweep(opts)


def _client(workdir: Path):
    from pipelines.tracking.store import client_for

    return client_for(sqlite_store(workdir))


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_three_trial_sweep_makes_a_parent_with_nested_children_and_a_report(ray_session, workdir, monkeypatch,
                                                                             capsys):
    from pipelines.sweep import tuning

    monkeypatch.setattr(tuning, "HEARTBEAT_S", 5.0)  # a line every 5 s: this sweep takes about 30
    space = _write_space(workdir, "tiny", {
        "lr_g": {"type": "float", "low": 1e-4, "high": 2e-3, "log": True},
        "arch": {"type": "categorical", "choices": ["mlp", "dcgan"]},
        "mlp_width": {"type": "categorical", "choices": [16], "when": {"arch": "mlp"}},
        "dcgan_width": {"type": "categorical", "choices": [8], "when": {"arch": "dcgan"}},
    })
    out = _sweep(workdir, space, trials=3, concurrency=2, scheduler="none", name="three")
    client = _client(workdir)
    parent = client.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.trials"] == "3"
    assert {"summary", "plots", "comparison", "search_space"} <= _artifacts(client, out.parent_run_id)
    assert _artifacts(client, out.parent_run_id, "summary") == {"summary/summary.csv", "summary/summary.html"}
    assert "plots/parallel_coordinate.png" in _artifacts(client, out.parent_run_id, "plots")

    # while trials ran, the console said where they were, by their runs' names
    console = capsys.readouterr().err
    said = re.findall(r"^  \d+ s: (.*) \((\d) running\), (\d) done, (\d) waiting$", console, re.M)
    assert said and all(int(r) + int(d) + int(w) == 3 for _, r, d, w in said), said
    # each running trial by its run's number once it reported, else Tune's id (which of
    # the two a heartbeat catches depends on timing: the unit test below pins both)
    running = [t for where, *_ in said for t in where.split(", ") if where]
    assert running and all(re.fullmatch(r"t0\d at epoch \d|trial \w+ starting", t) for t in running), said
    assert re.findall(r"^  t0\d .*: epoch 2, FID [\d.]+ \((\d) done\)$", console, re.M) == ["1", "2", "3"], console

    children = out.runs
    assert len(children) == 3
    assert len({c.data.tags["tune_trial_id"] for c in children}) == 3
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == out.parent_run_id
        assert c.info.status == "FINISHED"
        assert math.isfinite(c.data.metrics["fid"]) and "best_fid" in c.data.metrics
        assert c.data.metrics["epoch"] == 2 and "d_loss" in c.data.metrics
        assert {"images", "checkpoints", "progress.gif"} <= _artifacts(client, c.info.run_id)
        assert model_roles(client, c.info.run_id) == {"best", "final"}
        # start-up: a trial reaches its first training step within 30 s of starting
        assert float(c.data.tags["trial.seconds_to_first_step"]) < 30
        # readable in the UI: a short name, a description, only the active params, the
        # dataset, the package's own commit, the kimg clock, a fixed grid name per eval
        assert c.info.run_name.startswith("t0") and c.info.run_name.split()[0] in c.data.tags["mlflow.note.content"]
        inactive = "dcgan_width" if c.data.params["arch"] == "mlp" else "mlp_width"
        assert inactive not in c.data.params
        assert c.data.tags.get("mlflow.source.git.commit") or c.data.tags.get("source.version")
        datasets = [(d.dataset.name, d.dataset.digest) for d in c.inputs.dataset_inputs]
        assert datasets == [("mnist-5k", "1680ceb83f00b2ba")]
        assert c.data.metrics["kimg"] == pytest.approx(2 * 78 * 64 / 1000)
        assert {"grids/epoch_000.png", "grids/epoch_002.png"} <= _artifacts(client, c.info.run_id, "grids")
        assert c.data.metrics[names.WALL_S] > 0 and c.data.metrics[names.PEAK_MEMORY_MB] > 0
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert set(parent.data.metrics) == {"sweep.fid", "sweep.best_fid", "sweep.trials_finished", "sweep.seconds"}
    assert "| # | trial |" in parent.data.tags["mlflow.note.content"]
    assert out.best is not None and out.best.info.run_id == parent.data.tags["best_run_id"]

    import pandas as pd

    local = client.download_artifacts(out.parent_run_id, "summary/summary.csv", str(workdir))
    table = pd.read_csv(local)
    assert len(table) == 3 and {"status", "best_fid", "epochs_run", "lr_g", "arch", "name", "wall_s", "cpu_h",
                                "gpu_h", "peak_mem_mb", "node"} <= set(table.columns)

    # Promotion from this real sweep picks the child with the best (lowest) fid in its
    # history, and a second promotion of the same sweep keeps that champion.
    from pipelines.registry.promote import promote
    from pipelines.tracking.names import CHAMPION

    best_of = {c.info.run_id: min(m.value for m in client.get_metric_history(c.info.run_id, "fid"))
               for c in children}
    first = promote(client, sweep="three", model_name="sweep-gen")
    assert first.candidate.run_id == min(best_of, key=best_of.get) and first.champion_moved
    again = promote(client, sweep=out.parent_run_id, model_name="sweep-gen")
    assert again.version == first.version and not again.champion_moved
    champion = client.get_model_version_by_alias("sweep-gen", CHAMPION)
    assert champion.run_id == first.candidate.run_id

    # Scored == shipped: these trials train BatchNorm generators without EMA; the champion,
    # re-evaluated in a process of its own with the settings its run used (the defaults),
    # gives the value its version carries (logged back to its run at full precision).
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "evaluate", "--model", "models:/sweep-gen@champion", "--log"],
        cwd=workdir, env={**os.environ, "MLFLOW_TRACKING_URI": sqlite_store(workdir)},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "models:/sweep-gen@champion vs mnist-5k (classifier, 200 samples, seed 0)" in done.stdout
    assert f"logged to run {champion.run_id}" in done.stdout
    assert "logged in training" in done.stdout.split("\nfid ", 1)[1].splitlines()[0]
    again = client.get_run(champion.run_id).data.metrics["eval_classifier_fid"]
    assert again == pytest.approx(float(champion.tags["metric_value"]), rel=1e-6)


@pytest.mark.slow  # the lifecycle matrix's pruned[trial] cell is the fast one
def test_asha_stops_a_trial_with_a_broken_learning_rate(ray_session, workdir):
    # Seed 0 samples lr_g 1e-3 first, then 1e-7 (G frozen near its random init): the
    # broken trial trails the first one at the first rung.
    space = _write_space(workdir, "asha", {
        "arch": "dcgan", "dcgan_width": 8, "epochs": 3,
        "lr_g": {"type": "categorical", "choices": [1e-7, 1e-3]},
    })
    out = _sweep(workdir, space, trials=3, concurrency=1, scheduler="asha", grace_period=1,
                 seed=0, name="asha")
    pruned = "tune: stopped by the scheduler"
    stopped = [c for c in out.runs if c.data.tags.get("stopped_reason", "").startswith(pruned)]
    assert stopped, [(c.data.params.get("lr_g"), c.data.metrics.get("fid")) for c in out.runs]
    for c in stopped:
        assert c.info.status == "KILLED" and c.data.metrics["epoch"] < 3
    assert any(c.info.status == "FINISHED" and c.data.metrics["epoch"] == 3 for c in out.runs)


@pytest.mark.slow  # the lifecycle matrix's diverged[trial] cell is the fast one
def test_a_diverging_trial_is_stopped_with_its_reason_and_the_sweep_goes_on(ray_session, workdir):
    space = _write_space(workdir, "diverge", {
        "arch": "mlp", "mlp_width": 16,
        "lr_g": {"type": "categorical", "choices": [1e3, 2e-4]},
        # both networks at lr 1e3: G's loss explodes within the first epoch
        "lr_d": {"type": "categorical", "choices": [1e3], "when": {"lr_g": 1e3}},
    })
    out = _sweep(workdir, space, trials=3, concurrency=1, scheduler="none", seed=0, name="diverge")
    by_lr = {}
    for c in out.runs:
        by_lr.setdefault(c.data.params["lr_g"], []).append(c)
    assert set(by_lr) == {"1000.0", "0.0002"}, by_lr.keys()
    for c in by_lr["1000.0"]:  # diverged: a failure, not a score
        assert c.info.status == "FAILED"
        assert c.data.tags["stopped_reason"].startswith("health: G loss")
        assert "final" not in model_roles(_client(workdir), c.info.run_id)
    for c in by_lr["0.0002"]:
        assert c.info.status == "FINISHED" and c.data.metrics["epoch"] == 2
    assert out.best.data.params["lr_g"] == "0.0002"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children(client, experiment_id: str, parent_id: str):
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_the_heartbeat_says_where_the_running_trials_are_by_their_run_names():
    from types import SimpleNamespace as Trial  # what the line reads of Tune's Trial

    from pipelines.sweep.naming import TUNE_NAME_KEY
    from pipelines.sweep.tuning import heartbeat

    trials = [Trial(status="RUNNING", trial_id="a1", last_result={TUNE_NAME_KEY: "t03 dcgan lr_g=3e-4", "epoch": 6}),
              Trial(status="RUNNING", trial_id="b2", last_result={}),
              Trial(status="TERMINATED", trial_id="c3", last_result={"epoch": 8}),
              Trial(status="ERROR", trial_id="d4", last_result=None),
              Trial(status="PENDING", trial_id="e5", last_result=None)]
    assert heartbeat(trials, 250, total=40) == ("4 min: t03 at epoch 6, trial b2 starting (2 running), 1 done, "
                                                "1 failed, 36 waiting")
    assert heartbeat(trials[2:], 30) == "30 s: (0 running), 1 done, 1 failed, 1 waiting"


def test_a_distributed_trials_hours_leave_out_what_its_workers_waited_for(tmp_path):
    """A trial on Ray Train workers starts at once (its function holds no CPU); the time its
    workers then wait for theirs (system/queued_s, which its rank 0 adds up) used nothing."""
    import time

    from pipelines.sweep.trial import TrialContext, trial_resources
    from pipelines.tracking.store import client_for

    uri = sqlite_store(tmp_path)
    client = client_for(uri)
    exp = client.create_experiment("costs")
    run_id = client.create_run(exp).info.run_id
    ctx = TrialContext(uri, exp, "parent", "s", cpus_per_trial=1, workers_per_trial=2)
    client.log_metric(run_id, names.QUEUED_S, 30.0)  # its earlier life's workers waited 30 s...
    client.log_metric(run_id, names.QUEUED_S, 50.0)  # ...and this life's 20 s
    # this life began 100 s ago; the earlier one used 40 s (its wall_s), before it 30 s were queued
    trial_resources(client, run_id, ctx, time.time() - 100, None, earlier=40.0, queued=30.0)
    m = client.get_run(run_id).data.metrics
    assert m[names.WALL_S] == pytest.approx(40 + 100 - 20, abs=5)
    assert m[names.CPU_HOURS] == pytest.approx(m[names.WALL_S] * 2 / 3600)


@pytest.mark.slow  # a CLI sweep killed and resumed: over a minute
def test_resume_after_killing_the_driver_finishes_the_trials_without_duplicate_runs(workdir):
    space = _write_space(workdir, "resume", {
        "arch": "mlp", "mlp_width": 16, "epochs": 4,
        "lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    })
    cmd = [sys.executable, "-m", "pipelines.cli", "sweep", "--space", str(space), "--trials", "2",
           "--concurrency", "1", "--scheduler", "none", "--name", "resumable"]
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    log = open(workdir / "first.log", "wb")  # noqa: SIM115 - closed below
    driver = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=log, start_new_session=True)
    client = None  # opened once the driver has made the store

    def killable() -> bool:
        """Kill once a trial finished and another one is past its first eval..."""
        nonlocal client
        assert driver.poll() is None, (workdir / "first.log").read_text()[-3000:]
        if b"parent run" not in (workdir / "first.log").read_bytes():
            return False  # opening the store while the driver creates it races its migration
        client = client or _client(workdir)
        exp = client.get_experiment_by_name("gan-pipelines")
        parents = client.search_runs([exp.experiment_id], "tags.`sweep.role` = 'parent'") if exp else []
        if not parents:
            return False
        kids = _children(client, exp.experiment_id, parents[0].info.run_id)
        running = [k.data.tags["tune_trial_id"] for k in kids
                   if k.info.status == "RUNNING" and "epoch" in k.data.metrics]
        # ...and once Tune's saved state knows that trial: a trial Tune never recorded is
        # replaced on resume (its run is then tagged sweep.lost and KILLED)
        saved = "".join(f.read_text() for f in (workdir / "ray_results" / "resumable").glob(
            "experiment_state*.json"))
        return any(k.info.status == "FINISHED" for k in kids) and bool(running) and running[0] in saved

    try:
        wait_for(killable, timeout=240, every=0.5)
        # Every process the driver started (Ray's, the trials' workers, its reaper), as of now.
        started = psutil.Process(driver.pid).children(recursive=True)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait()
        log.close()
    # Resume once none of them is left to write to the runs (the reaper ends what the
    # process group did not take).
    wait_for(lambda: not any(_alive(p) for p in started), timeout=120)

    resumed = subprocess.run([sys.executable, "-m", "pipelines.cli", "sweep", "--resume", "resumable"],
                             cwd=workdir, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "best trial" in resumed.stdout and "mlflow ui --backend-store-uri" in resumed.stdout

    exp = client.get_experiment_by_name("gan-pipelines")
    parents = client.search_runs([exp.experiment_id], "tags.`sweep.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = _children(client, exp.experiment_id, parents[0].info.run_id)
    trial_ids = [k.data.tags["tune_trial_id"] for k in kids]
    assert len(kids) == 2 and len(set(trial_ids)) == 2, trial_ids
    # the trial that was running when the driver died went on in its own run
    assert any("resumed_from_step" in k.data.tags for k in kids)
    for k in kids:
        assert k.info.status == "FINISHED", (k.info.status, k.data.tags.get("stopped_reason"))
        steps = [m.step for m in client.get_metric_history(k.info.run_id, "d_loss")]
        assert len(steps) == len(set(steps)), "a resumed trial logged a step twice"
        assert k.data.metrics["epoch"] == 4
