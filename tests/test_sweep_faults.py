"""What survives a killed sweep driver, with real processes: the `gan-pipeline sweep` CLI
as its own process (and session) over a sqlite store, killed with SIGKILL at a point the
test waits for, then `sweep --resume`: a trial pruned just before the kill, a trial Tune
never recorded, and the local Ray the driver started (gone with it; a user's cluster
untouched). Tune's saved state is read from its folder to know what the killed driver
had recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import arm_fault, fault_env, sqlite_store, wait_for

pytestmark = pytest.mark.integration

# Trials of a few seconds each on 2 cores (mlp, 5,000 digits in batches of 256).
TINY = {"dataset": "mnist-5k", "arch": "mlp", "mlp_width": 8, "latent_dim": 16, "batch_size": 256,
        "eval_samples": 100, "device": "cpu", "eval_budget": 0,
        "lr_g": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}


def write_space(folder: Path, params: dict) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    return path


def sweep(workdir: Path, *args: str, env: dict | None = None, log: str = "driver.log") -> subprocess.Popen:
    """The CLI in a session of its own: its session id finds every process it started."""
    # The store last: a cluster's env is a copy of os.environ, where an earlier test may have left a URI.
    e = {**os.environ, **(env or {}), "MLFLOW_TRACKING_URI": sqlite_store(workdir)}
    e.pop("GAN_PIPELINES_DEBUG", None)
    out = open(workdir / log, "ab")  # noqa: SIM115 - the child holds it; closed with the test's folder
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sweep", *args], cwd=workdir, env=e,
                            stdout=out, stderr=out, start_new_session=True)


def finish(p: subprocess.Popen, workdir: Path, log: str = "driver.log", timeout: float = 300) -> str:
    p.wait(timeout=timeout)
    text = (workdir / log).read_text()
    assert p.returncode == 0, text[-3000:]
    return text


def client(workdir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sqlite_store(workdir))


def trials(workdir: Path, driver: subprocess.Popen | None = None, log: str = "driver.log") -> list:
    """The sweep's child runs ([] until the driver has made its parent run)."""
    if driver is not None:
        assert driver.poll() is None, (workdir / log).read_text()[-3000:]
    if b"parent run" not in (workdir / log).read_bytes():
        return []  # opening the store while the driver creates it races its migration
    c = client(workdir)
    exp = c.get_experiment_by_name("gan-pipelines")
    return c.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''") if exp else []


def tune_state(workdir: Path, name: str) -> dict[str, str]:
    """{trial id: status} in the newest experiment state Tune saved for sweep `name`."""
    files = sorted((workdir / "ray_results" / name).glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        saved = json.loads(files[-1].read_text())
    except json.JSONDecodeError:  # being written
        return {}
    states = [json.loads(t[0]) for t in saved["trial_data"]]
    return {s["trial_id"]: s["status"] for s in states}



def kill_driver_and_its_ray(driver: subprocess.Popen) -> None:
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


def artifacts(workdir: Path, run_id: str) -> set[str]:
    return {a.path for a in client(workdir).list_artifacts(run_id)}


@pytest.mark.slow  # a sweep driver killed and resumed: minutes; tests/test_sweep.py resumes one fast
def test_a_trial_pruned_just_before_the_driver_died_is_closed_as_pruned_on_resume(tmp_path):
    # Seed 0 samples lr_g 1e-3, then 1e-7 (G frozen near its random init): ASHA stops the
    # second trial at its first rung. Its process dies as it is stopped, before it closes
    # its run (the test hook); the driver dies once Tune's saved state has that trial ended.
    space = write_space(tmp_path, {**TINY, "arch": "dcgan", "dcgan_width": 8, "batch_size": 64,
                                   "eval_samples": 200, "epochs": 3,
                                   "lr_g": {"type": "categorical", "choices": [1e-7, 1e-3]}})
    arm_fault(tmp_path / "faults", "die_when_pruned")
    driver = sweep(tmp_path, "--space", str(space), "--trials", "3", "--concurrency", "1", "--scheduler", "asha",
                   "--grace-period", "1", "--seed", "0", "--name", "pruned",
                   env=fault_env(tmp_path / "faults"))
    try:
        def stopped_unclosed():
            ended = {t for t, s in tune_state(tmp_path, "pruned").items() if s == "TERMINATED"}
            return [r for r in trials(tmp_path, driver)
                    if r.info.status == "RUNNING" and r.data.tags["tune_trial_id"] in ended]

        (pruned,) = wait_for(stopped_unclosed)
    finally:
        kill_driver_and_its_ray(driver)
    assert pruned.data.params["lr_g"] == "1e-07" and "stopped_reason" not in pruned.data.tags

    finish(sweep(tmp_path, "--resume", "pruned", log="resume.log"), tmp_path, log="resume.log")
    run = client(tmp_path).get_run(pruned.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["stopped_reason"].startswith("tune: stopped by the scheduler after epoch 1")
    assert "progress.gif" in artifacts(tmp_path, run.info.run_id)
    runs = trials(tmp_path)
    assert len(runs) == 3 and sum(r.info.status == "FINISHED" for r in runs) == 2


@pytest.mark.slow  # a sweep driver killed and resumed: minutes; tests/test_sweep.py resumes one fast
def test_a_trial_tune_never_recorded_is_replaced_and_its_run_marked_lost(tmp_path):
    # Tune saves its state at its first step and then, with this period, not again before
    # the kill: the second trial trains without Tune's saved state knowing it.
    # 30 epochs: under load the second trial must not finish (Tune saves its state then)
    # between the check below and the kill.
    space = write_space(tmp_path, {**TINY, "epochs": 30})
    driver = sweep(tmp_path, "--space", str(space), "--trials", "2", "--concurrency", "1", "--scheduler", "none",
                   "--name", "lost", env={"TUNE_GLOBAL_CHECKPOINT_S": "100000"})
    try:
        def second_trains():  # and has epochs left: it is killed mid-training
            runs = trials(tmp_path, driver)
            return len(runs) == 2 and [r for r in runs if r.info.status == "RUNNING" and
                                       1 <= r.data.metrics.get("epoch", 0) <= 3]

        (second,) = wait_for(second_trains)
    finally:
        kill_driver_and_its_ray(driver)
    lost_id = second.data.tags["tune_trial_id"]
    assert lost_id not in tune_state(tmp_path, "lost")

    log = finish(sweep(tmp_path, "--resume", "lost", log="resume.log"), tmp_path, log="resume.log")
    assert "FileNotFoundError" not in log, log  # Tune's noise about the trial it lost
    runs = {r.data.tags["tune_trial_id"]: r for r in trials(tmp_path)}
    lost = runs.pop(lost_id)
    assert lost.info.status == "KILLED" and lost.data.tags["sweep.lost"] == "true"
    assert lost.data.tags["stopped_reason"].startswith("lost: the driver died before Tune recorded this trial")
    assert "progress.gif" in artifacts(tmp_path, lost.info.run_id)  # what it trained stays viewable
    # a new trial took its place: the sweep still has its two finished trials
    assert len(runs) == 2 and all(r.info.status == "FINISHED" and "sweep.lost" not in r.data.tags
                                  for r in runs.values())
    parent = client(tmp_path).get_run(second.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep.trials_finished"] == 2


# --------------------------------------------------------------------------- Ray processes


def session(sid: int) -> list[psutil.Process]:
    """The live processes of session `sid` (the CLI and what it started)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (OSError, psutil.Error):
            continue
    return out


def started_by(driver: subprocess.Popen) -> list[psutil.Process]:
    """Everything the CLI started so far: its session and its descendants (the watcher of
    its local Ray runs in a session of its own)."""
    procs = {p.pid: p for p in session(driver.pid)}
    procs.update((p.pid, p) for p in psutil.Process(driver.pid).children(recursive=True))
    procs.pop(driver.pid, None)
    return list(procs.values())


def seconds_until_gone(procs: list[psutil.Process], sid: int, limit: float = 90) -> float:
    start = time.time()
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs) or session(sid):
        assert time.time() - start < limit, [p.cmdline()[:2] for p in procs if p.is_running()]
        time.sleep(0.2)
    return time.time() - start


@pytest.mark.slow  # a sweep driver killed with -9 and its Ray waited out: over a minute
def test_the_local_ray_a_sweep_started_goes_with_it_even_after_kill_9(tmp_path):
    space = write_space(tmp_path, {**TINY, "epochs": 3})
    args = ["--space", str(space), "--trials", "2", "--concurrency", "1", "--scheduler", "none", "--name", "ray"]
    driver = sweep(tmp_path, *args)
    try:
        wait_for(lambda: any(r.data.metrics.get("epoch") for r in trials(tmp_path, driver)))
        ours = started_by(driver)
        assert {"raylet", "gcs_server"} <= {p.name() for p in ours}
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as a user or the OOM killer does
        driver.wait()
    gone_after_kill = seconds_until_gone(ours, driver.pid)

    resumed = sweep(tmp_path, "--resume", "ray", log="resume.log")
    seen: dict[int, psutil.Process] = {}
    while resumed.poll() is None:
        seen.update((p.pid, p) for p in started_by(resumed))
        time.sleep(0.5)
    finish(resumed, tmp_path, log="resume.log")
    gone_after_exit = seconds_until_gone(list(seen.values()), resumed.pid)
    print(f"Ray gone {gone_after_kill:.1f} s after kill -9 of the driver, {gone_after_exit:.1f} s after its exit")
    assert gone_after_kill < 10 and gone_after_exit < 5


@pytest.mark.slow  # a sweep driver killed and resumed: minutes; tests/test_sweep.py resumes one fast
def test_a_cluster_given_with_ray_address_outlives_a_killed_driver(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cluster_parts import RayCluster

    cluster = RayCluster(tmp_path, {}, second_node=False)
    try:
        theirs = started_by(cluster.nodes["node_a"]) + [psutil.Process(cluster.nodes["node_a"].pid)]
        space = write_space(tmp_path, {**TINY, "epochs": 20})
        driver = sweep(tmp_path, "--space", str(space), "--trials", "1", "--scheduler", "none", "--name", "theirs",
                       "--ray-address", cluster.gcs_address, env=cluster.env)
        try:
            wait_for(lambda: any(r.data.metrics.get("epoch") for r in trials(tmp_path, driver)))
        finally:
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
        time.sleep(6)  # longer than a watcher takes to stop what it watches
        assert all(p.is_running() for p in theirs), [p.pid for p in theirs if not p.is_running()]
        assert "node_a" in cluster.alive_nodes().values()
    finally:
        cluster.stop()
