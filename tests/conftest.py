"""Shared fixtures: small configs, the embedded dataset loaded once per session, and a
real `mlflow server` on 127.0.0.1 (registry and browser tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


def store_with_run(tmp_path: Path, experiment: str) -> tuple:
    """A real sqlite MLflow store in the test's folder and one run in it: (client, run_id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.create_run(client.create_experiment(experiment)).info.run_id


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


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server.url
    server.kill()
