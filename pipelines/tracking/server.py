"""A private `mlflow server` in front of a local sqlite store, for the length of a sweep.

Several trial processes writing one sqlite file directly hit "database is locked" and
migration races; one server process serialises them. Artifacts stay plain files (the
experiments made by ensure_experiment name a local mlartifacts folder), so the server
only carries metadata. It dies with the process that started it, even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipelines.errors import TrackingError
from pipelines.tracking.store import sqlite_path

START_TIMEOUT_S = 90.0


def needs_server(uri: str, concurrency: int) -> bool:
    return sqlite_path(uri) is not None and concurrency > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: SIGTERM this child when the driver dies, however it dies.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _mlflow_command() -> list[str]:
    script = Path(sys.executable).with_name("mlflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]


class LocalServer:
    """`mlflow server` on 127.0.0.1:<free port> over the sqlite store `uri`.

    Started by the constructor and awaited by url(), so its start-up (tens of seconds
    on a busy 2-core machine) overlaps with ray.init."""

    def __init__(self, uri: str, log_file: Path) -> None:
        db = sqlite_path(uri)
        assert db is not None, uri
        artifacts = db.expanduser().resolve().parent / "mlartifacts"
        self.port = _free_port()
        self.log_file = log_file
        cmd = [*_mlflow_command(), "server", "--backend-store-uri", uri,
               "--default-artifact-root", artifacts.as_uri(), "--no-serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                         preexec_fn=_die_with_parent,
                                         # only tracking: no background job runners
                                         env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                                              "MLFLOW_DISABLE_TELEMETRY": "true"})
        self._ready = False

    def url(self) -> str:
        """The server's tracking URI, once it answers /health."""
        url = f"http://127.0.0.1:{self.port}"
        if not self._ready:
            _wait_healthy(self.proc, url, self.log_file)
            self._ready = True
        return url

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, log_file: Path) -> None:
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise TrackingError(f"mlflow server for the sweep exited ({proc.returncode}): {tail[0]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.3)
    raise TrackingError(f"mlflow server for the sweep did not answer within {START_TIMEOUT_S:.0f} s "
                        f"(log: {log_file})")
