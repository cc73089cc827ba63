"""Shared fixtures: small configs, the embedded dataset loaded once per session, and a
real `mlflow server` on 127.0.0.1 (registry and browser tests)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


FAULTS_DIR = Path(__file__).parent / "faults"  # the test-only fault hooks (tests/faults/sitecustomize.py)


def fault_env(folder: Path) -> dict[str, str]:
    """Environment for a process (and everything it starts) that may be given faults:
    arm one with arm_fault(folder, name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(FAULTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "GAN_PIPELINES_FAULTS": str(folder)}


def arm_fault(folder: Path, name: str, text: str = "1") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


@functools.cache
def _migrated_store() -> Path:
    """One empty store MLflow created and migrated, in a folder removed when the session ends."""
    from mlflow.tracking import MlflowClient

    folder = tempfile.TemporaryDirectory(prefix="mlflow-template-")
    _KEPT.append(folder)
    template = Path(folder.name) / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates it
    return template


_KEPT: list[tempfile.TemporaryDirectory] = []  # alive until the session ends, then removed


def sqlite_store(folder: Path, name: str = "mlflow.db") -> str:
    """The URI of a real sqlite MLflow store at `folder/name`, at MLflow's current schema.
    MLflow migrates a new sqlite file from scratch (2-5 s, in every process that creates
    one); a test's store is a copy of one store this session migrated, with its Default
    experiment pointed where MLflow would have put it for `folder` (./mlruns/0)."""
    path = Path(folder) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_migrated_store(), path)
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        (str(Path(folder).resolve() / "mlruns" / "0"),))
    return f"sqlite:///{path}"


def store_with_run(tmp_path: Path, experiment: str) -> tuple:
    """A real sqlite MLflow store in the test's folder and one run in it: (client, run_id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sqlite_store(tmp_path))
    return client, client.create_run(client.create_experiment(experiment)).info.run_id


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory):
    """One local Ray (2 CPUs, loopback only) for every test that runs Ray in this process;
    yields the folder its processes read faults from (arm_fault). Those tests run last
    (pytest_collection_modifyitems), so Ray is up only while they run and every test that
    starts its own Ray (a CLI sweep, a cluster) runs before it."""
    ray = pytest.importorskip("ray")
    from pipelines.distributed.connect import init_local

    folder = tmp_path_factory.mktemp("faults")
    saved = dict(os.environ)
    os.environ.update(fault_env(folder))  # Ray's processes inherit it at start
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        init_local(num_cpus=2, logging_level="WARNING")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield folder
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the session's Ray run last, in their usual order (see local_ray)."""
    on_ray = [i for i in items if "local_ray" in getattr(i, "fixturenames", ())]
    if on_ray:
        rest = [i for i in items if "local_ray" not in getattr(i, "fixturenames", ())]
        items[:] = rest + on_ray


@pytest.fixture(scope="session")
def classifier_cache(mnist5k) -> Path:
    """The session's cache ($GAN_PIPELINES_CACHE) once it holds mnist-5k's trained
    classifier backbone (trained here if it is not there yet: CI starts with it empty)
    and the copy check's reference of its training digits."""
    from gan.metrics.base import cache_root
    from gan.metrics.classifier import load_classifier
    from gan.metrics.copies import training_reference

    training_reference(mnist5k, load_classifier(mnist5k))
    return cache_root()


def cache_for(folder: Path, session_cache: Path) -> str:
    """A GAN_PIPELINES_CACHE of a test's own (its outboxes apart from every other test's)
    that holds the session's trained classifiers (and copy-check references), so the
    processes using it do not train the backbone again (about a minute each on 2 cores)."""
    folder.mkdir(parents=True, exist_ok=True)
    for trained in [*session_cache.glob("classifier-*.pt"), *session_cache.glob("copyref-*.npz")]:
        if not (folder / trained.name).exists():
            shutil.copyfile(trained, folder / trained.name)
    return str(folder)


@pytest.fixture(scope="session")
def mnist5k():
    from gan.data import load_dataset

    return load_dataset("mnist-5k")


@pytest.fixture(scope="session")
def mnist_small(mnist5k):
    """512 digits (shuffled across classes): enough for loop tests, fast on 2 cores."""
    import torch

    from gan.data import ImageData

    idx = torch.randperm(len(mnist5k), generator=torch.Generator().manual_seed(0))[:512]
    return ImageData("mnist-512", mnist5k.images[idx].clone(), mnist5k.labels[idx].clone())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 300, every: float = 0.3):
    """The predicate's first truthy value, polled until `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over a throwaway sqlite store, on a fixed port so
    a test can kill it and start it again on the same store."""

    def __init__(self, root) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--artifacts-destination", str(self.root / "server-artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            # No background job runners (a dozen huey processes): this server only tracks.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start")

    def kill(self) -> None:
        """SIGKILL its process group: its graceful shutdown takes ~10 s; the store is a throwaway."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One `mlflow server` for the session: each test that uses it works in experiments
    and registered models of its own names. A test that stops or restarts its server
    starts its own MlflowServer (tests/test_server_loss.py)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server.url
    server.kill()


# Debian's headless Chromium and its driver (.ci/run installs them): the browser tests' user.
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def missing_outside_ci(missing: bool) -> bool:
    """A skip condition for a system part .ci/run installs (Chromium, PostgreSQL): skipped
    on a contributor's machine without it, never in CI (CI=true), where the test runs and
    fails loudly instead of landing a guarantee nobody checked."""
    return missing and not os.environ.get("CI")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1800,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()
