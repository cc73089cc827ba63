"""The tracking server lost mid-run, with real processes: a real `mlflow server` killed
with SIGKILL while a run trains, and started again on the same store.

Training goes on meanwhile, its writes (and its reads: a Ray Train rank 0 asks the run
each epoch whether its owner wants it stopped) kept off the server; whether the server is
back before the run ends (the kept writes are sent, exit 0) or not (exit 1 with one line,
and `--resume` sends them later), the run ends with every step and every eval logged
exactly once, its checkpoints and its models. The "back mid-run" guarantee is one cell
per mode a run trains in: a local `train`, `train --workers 2` (Ray Train), a sweep trial
and a sweep trial on 2 workers (each its own process and its own local Ray)."""

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
import yaml
from conftest import MlflowServer, cache_for, wait_for

pytestmark = pytest.mark.integration

FAST = ["--arch", "mlp", "--mlp-width", "8", "--latent-dim", "16", "--device", "cpu", "--batch-size", "256",
        "--eval-samples", "100", "--eval-budget", "0"]  # every epoch scored: the tests count evals
STEPS = 5000 // 256  # per epoch (a global batch: the same on 2 workers)
EPOCHS = 40
# The matrix's runs: long enough that the server is killed after the first eval and an
# eval is kept offline before the end (a run that ends first waits for the server).
MATRIX_EPOCHS = 16
MODES = ["local", "ray-train", "trial", "dist-trial"]


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

    def __init__(self, cwd: Path, url: str, *args: str, wait_s: str = "120", command: str = "train") -> None:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "GAN_PIPELINES_LEASE_TIMEOUT_S": "3",
               "GAN_PIPELINES_OFFLINE_WAIT_S": wait_s, "GAN_PIPELINES_CACHE": str(cwd / "cache")}
        for key in ("GAN_PIPELINES_DEBUG", "RAY_ADDRESS"):  # each its own local Ray
            env.pop(key, None)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", command, *args], cwd=cwd, env=env,
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


def in_mode(mode: str, cwd: Path, url: str, experiment: str, epochs: int) -> Train:
    """One run of `epochs` epochs in `mode`: `train` (local or --workers 2), or a one-trial
    sweep (on one worker or --workers-per-trial 2) of exactly that run."""
    flags = ["--epochs", str(epochs), "--experiment", experiment, *FAST]
    if mode in ("local", "ray-train"):
        workers = ["--workers", "2", "--ray-storage", str(cwd / "ray")] if mode == "ray-train" else []
        return Train(cwd, url, *flags, *workers)
    params: dict = {}
    for name, value in zip(flags[::2], flags[1::2], strict=True):
        key = name.removeprefix("--").replace("-", "_")
        if key != "experiment":
            params[key] = yaml.safe_load(value)
    params["seed"] = {"type": "categorical", "choices": [0]}  # one trial: exactly the run above
    space = cwd / "space.yaml"
    space.write_text(yaml.safe_dump({"params": params}))
    workers = ["--workers-per-trial", "2", "--cpus-per-trial", "1"] if mode == "dist-trial" else []
    return Train(cwd, url, "--space", str(space), "--trials", "1", "--concurrency", "1", "--scheduler", "none",
                 "--experiment", experiment, "--ray-storage", str(cwd / "ray"), *workers, command="sweep")


def _wait_for_first_eval(url: str, experiment: str, train: Train) -> str:
    """The training run's id once its first eval is logged (the process starts, imports and
    builds its evaluator first: a minute or more on a busy machine); a sweep's parent run
    is not it."""
    c = _client(url)

    def first_eval() -> str | None:
        assert train.proc.poll() is None, "".join(train.err)[-2000:]
        exp = c.get_experiment_by_name(experiment)
        runs = [r for r in (c.search_runs([exp.experiment_id]) if exp else [])
                if r.data.tags.get("sweep.role") != "parent"]
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


def _assert_whole(url: str, run_id: str, epochs: int = EPOCHS) -> None:
    """Every step and eval exactly once, the checkpoints kept, a best and a final model."""
    c = _client(url)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED", run.data.tags
    losses = [m.step for m in c.get_metric_history(run_id, "d_loss")]
    assert losses == list(range(1, epochs * STEPS + 1))
    evals = [m.step for m in c.get_metric_history(run_id, "fid")]
    assert evals == [STEPS * e for e in range(1, epochs + 1)]
    checkpoints = [a.path for a in c.list_artifacts(run_id, "checkpoints")]
    assert f"checkpoints/epoch_{epochs:05d}.pt" in checkpoints and len(checkpoints) <= 3
    grids = {a.path for a in c.list_artifacts(run_id, "grids")}
    assert f"grids/epoch_{epochs:03d}.png" in grids
    roles = {m.tags.get("gan.role") for m in c.search_logged_models(experiment_ids=[run.info.experiment_id])}
    assert "final" in ",".join(r or "" for r in roles) and "best" in ",".join(r or "" for r in roles)


@pytest.mark.slow  # tests/test_outbox_replay.py replays an outbox in-process against a real store
@pytest.mark.parametrize("mode", MODES)
def test_a_server_back_mid_run_gets_everything_kept_meanwhile(mode, server, tmp_path):
    t = in_mode(mode, tmp_path, server.url, "lost", MATRIX_EPOCHS)
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
    _assert_whole(server.url, run_id, MATRIX_EPOCHS)
    assert not (tmp_path / "cache" / "offline" / run_id).exists()  # nothing left behind


@pytest.mark.slow  # tests/test_outbox_replay.py replays an outbox in-process against a real store
def test_a_server_gone_past_the_end_exits_1_keeping_all_and_resume_sends_it(server, tmp_path):
    t = Train(tmp_path, server.url, "--epochs", str(EPOCHS), "--experiment", "lost", *FAST, wait_s="2")
    run_id = _wait_for_first_eval(server.url, "lost", t)
    server.kill()
    rc, err = t.finish()
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    outbox = tmp_path / "cache" / "offline" / run_id
    assert last.startswith("gan-pipeline train: stopped: the tracking server is away since step ")
    assert str(outbox) in last and f"--resume {run_id}" in last and len(last) - len(str(outbox)) <= 200
    assert (outbox / "events.jsonl").exists()

    server.start()
    rc, err = Train(tmp_path, server.url, "--resume", run_id).finish()
    assert rc == 0, err
    _assert_whole(server.url, run_id)
    assert not outbox.exists()
