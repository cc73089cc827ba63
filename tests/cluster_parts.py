"""Real cluster parts for tests/test_cluster.py, each started in its own process group,
recorded by PID and stopped by PID (never by name), leaving no process or port behind:

    postgres()       a throwaway PostgreSQL cluster (initdb + pg_ctl) on 127.0.0.1:<free port>
    mlflow_server()  `mlflow server` on it, artifacts proxied (--artifacts-destination)
    RayCluster       `ray start --head` + `ray start --address` on this machine: two nodes,
                     one CPU and one custom resource (node_a, node_b) each, token auth on

Secrets (the database password, the Ray token) are generated per run and travel only in
environment variables and 0600 files, never on a command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
AUTH_CONFIG = Path(__file__).resolve().parents[1] / "mlflow_auth.ini"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def pg_bindir() -> Path | None:
    """Debian's postgresql binaries (initdb, pg_ctl), newest version; None if not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group this test started (its leader's PID), then SIGKILL. A
    killed process takes a moment to exit (its memory is freed first): the group is
    polled, not looked at once."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 20.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
        deadline = time.time() + (wait_s if sig == signal.SIGKILL else 0.0)
        while _group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            return
    assert not _group_alive(proc.pid), f"process group {proc.pid} survived SIGKILL"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies (already dead, not yet reaped by init) count as gone
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[2]) == pgid and stat[0] != "Z":
                    return True
    return False


def pids_mentioning(marker: str) -> list[int]:
    """PIDs of live processes whose command line names `marker` (a folder this test made)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    if stat[0] != "Z":
                        out.append(int(pid))
    return out


def wait_http(url: str, proc: subprocess.Popen | None, log: Path, timeout_s: float,
              headers: dict[str, str] | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        request = urllib.request.Request(url, headers=headers or {})
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s: {log.read_text()[-2000:]}")


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres(password: str) -> Iterator[str]:
    """A throwaway PostgreSQL cluster with database and role `mlflow` (password `password`,
    scram-sha-256 even on 127.0.0.1); yields its URI *without* the password (give it as
    PGPASSWORD). Runs as the `postgres` user when we are root (postgres refuses root)."""
    bindir = pg_bindir()
    assert bindir is not None, "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
    root = Path(tempfile.mkdtemp(prefix="gp-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    pwfile = root / "pw"
    pwfile.touch(mode=0o600)
    pwfile.write_text(password + "\n")
    if as_user:
        shutil.chown(pwfile, "postgres", "postgres")
    data, log = root / "data", root / "postgres.log"
    (port,) = free_ports(1)
    run = dict(check=True, capture_output=True, text=True, cwd=root)
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "mlflow", f"--pwfile={pwfile}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], **run)  # type: ignore[call-overload]
    pwfile.unlink()
    started = False
    try:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                        "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off",
                        "start"], **run)  # type: ignore[call-overload]
        started = True
        env = {**os.environ, "PGPASSWORD": password}
        subprocess.run([str(bindir.parent / "bin" / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                        "-U", "mlflow", "mlflow"], env=env, **run)  # type: ignore[call-overload]
        # psycopg2 named: SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        pid_file = data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if started:  # pg_ctl stops the postmaster by the PID in its postmaster.pid
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, cwd=root, check=False)
        if pid is not None:
            deadline = time.time() + 10
            while time.time() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- MLflow


@contextlib.contextmanager
def mlflow_server(backend_uri: str, password: str, artifacts: Path, log: Path) -> Iterator[MlflowServer]:
    """`mlflow server --app-name basic-auth` on 127.0.0.1 over `backend_uri` (database password
    from PGPASSWORD), proxying artifacts to `artifacts`: clients upload through it and never
    touch the folder or the database. Its admin password and Flask secret are generated here
    and given as environment variables; `.client_env` is what a client needs. Yields at once
    (its start-up overlaps the caller's); .wait() blocks until it answers."""
    (port,) = free_ports(1)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--app-name", "basic-auth"]
    admin = secrets.token_urlsafe(24)
    env = {**os.environ, "PGPASSWORD": password, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_AUTH_CONFIG_PATH": str(AUTH_CONFIG),  # docs/cluster.md's: credential checks cached
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    with open(log, "ab") as out:  # cwd: its basic_auth.db (users) goes next to the log
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=log.parent)
    try:
        yield MlflowServer(f"http://127.0.0.1:{port}", proc, log,
                           {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": admin})
    finally:
        stop_group(proc, grace_s=2.0)


class MlflowServer:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, client_env: dict[str, str]) -> None:
        self.url, self.proc, self.log, self.client_env = url, proc, log, client_env

    def wait(self, timeout_s: float = 180.0) -> None:
        wait_http(f"{self.url}/health", self.proc, self.log, timeout_s)


# --------------------------------------------------------------------------- Ray


class RayCluster:
    """Two Ray nodes on this machine, each `ray start --block` in its own process group:
    the head (node_a) and a worker (node_b). Token auth is on (RAY_AUTH_MODE=token, a
    token generated for this cluster): `env` is what a client process needs."""

    def __init__(self, root: Path, extra_env: dict[str, str], second_node: bool = True) -> None:
        # Unix socket paths must stay short: a short private temp dir, not pytest's tmp_path.
        self.temp = Path(tempfile.mkdtemp(prefix="gp-ray-"))
        self.root = root
        gcs, dash, client = free_ports(3)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.env = {**os.environ, **extra_env, "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, subprocess.Popen] = {}
        self._start("node_a", ["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                               "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
                               "--include-dashboard", "true"], 10100)
        wait_http(f"{self.dashboard}/api/version", self.nodes["node_a"], self.log("node_a"), 90,
                  {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        if second_node:
            self.add_node("node_b")

    def log(self, name: str) -> Path:
        return self.root / f"ray-{name}.log"

    def _start(self, name: str, args: list[str], first_worker_port: int) -> None:
        manager, objects, agent_grpc, agent_http, metrics, runtime_env = free_ports(6)
        # A temp dir per node, as on separate machines: a node's runtime-env agent deletes
        # the job working dirs it unpacked, which must not be the other node's.
        # --node-ip-address 127.0.0.1: Ray 2.60's `ray start` still turns it into this
        # machine's IP and listens on every interface (a worker node refuses to start with
        # the switch pipelines.distributed.connect.loopback_only uses), so the token is
        # what guards these nodes; the local Ray a command starts is loopback only.
        cmd = [str(BIN / "ray"), "start", "--block", *args, "--node-ip-address", "127.0.0.1",
               "--num-cpus", "1", "--temp-dir", str(self.temp / name),
               "--resources", json.dumps({name: 1}), "--node-manager-port", str(manager),
               "--object-manager-port", str(objects), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--dashboard-agent-listen-port", str(agent_http), "--metrics-export-port", str(metrics),
               "--runtime-env-agent-port", str(runtime_env),
               "--min-worker-port", str(first_worker_port), "--max-worker-port", str(first_worker_port + 99)]
        with open(self.log(name), "ab") as out:
            self.nodes[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def add_node(self, name: str, timeout_s: float = 60.0) -> None:
        """Start a worker node and wait until the cluster counts it alive."""
        self._start(name, ["--address", self.gcs_address], 10200 + 100 * len(self.nodes))
        deadline = time.time() + timeout_s
        while name not in self.alive_nodes().values():
            assert time.time() < deadline, f"{name} did not join: {self.log(name).read_text()[-2000:]}"
            assert self.nodes[name].poll() is None, f"{name} exited: {self.log(name).read_text()[-2000:]}"
            time.sleep(1)

    def alive_nodes(self) -> dict[str, str]:
        """{node id: custom resource name} of the alive nodes (Ray's state API over HTTP)."""
        req = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?limit=100&detail=1",
                                     headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            listed = json.load(r)["data"]["result"]["result"]
        out = {}
        for n in listed:
            if n.get("state") == "ALIVE":
                names = [k for k in n.get("resources_total", {}) if k.startswith("node_")]
                out[n["node_id"]] = names[0] if names else "?"
        return out

    def kill_node(self, name: str) -> None:
        """The node dies as a lost machine would: SIGKILL to its whole process group."""
        proc = self.nodes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def cli(self, *args: str, timeout_s: float = 600, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """A `ray` CLI command against this cluster (its dashboard/job API), with the token."""
        return subprocess.run([str(BIN / "ray"), *args], env={**self.env, "RAY_API_SERVER_ADDRESS": self.dashboard},
                              capture_output=True, text=True, timeout=timeout_s, check=check, cwd=cwd)

    def stop(self) -> None:
        """Each node's process group by its leader's PID, then anything Ray spawned outside
        them that still names this cluster's temp dir (by PID)."""
        for proc in reversed(list(self.nodes.values())):
            stop_group(proc, grace_s=3.0)
        for pid in pids_mentioning(str(self.temp)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while pids_mentioning(str(self.temp)) and time.time() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)
