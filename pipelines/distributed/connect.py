"""Joining a Ray cluster or starting a local one: the one place every command does it.

An address is probed over TCP first (ray.init retries an unreachable one for minutes),
and a local-file tracking store is refused on a multi-node cluster (workers on other
machines could not write it). A local Ray started here is watched (reaper.py), so none
of its processes outlives the command, even a killed one; disconnect() ends both.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from typing import Any

from pipelines.compat.ray_api import local_cpus, loopback_only  # Ray's private switches, wrapped
from pipelines.distributed.reaper import child_pids, start_watcher, stop_watcher
from pipelines.errors import ClusterError, TrackingError

_watcher: subprocess.Popen | None = None  # of the local Ray this process started, if any


def ray_address(given: str | None) -> str | None:
    """--ray-address, else $RAY_ADDRESS, else None (start a local Ray)."""
    return given or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None, tracking_uri: str | None) -> bool:
    """Join `address` (None: start a local Ray); True when this call started or joined Ray
    (so the caller ends it with disconnect()), False when the process was already connected.
    tracking_uri None: the command logs nothing (data prepare), so any store will do."""
    import ray

    global _watcher
    if ray.is_initialized():  # a caller's session (a test, a Tune driver): use it
        return False
    check_reachable(address)
    before = child_pids()
    try:
        if address is None:
            init_local(logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClusterError(f"ray_address={address!r} is invalid: cannot connect ({first})") from None
    if address is None:  # ours: the processes ray.init just started (none if it joined a `ray start`)
        _watcher = start_watcher(sorted(child_pids() - before))
    if tracking_uri is None:
        return True
    try:
        check_store_for_cluster(tracking_uri, sum(1 for n in ray.nodes() if n.get("Alive")))
    except TrackingError:
        disconnect()
        raise
    return True


def init_local(**options: Any) -> None:
    """ray.init of a new local Ray that listens on loopback only, never on the machine's
    own IP (`options`: ray.init's, e.g. num_cpus)."""
    import ray

    with loopback_only():
        ray.init(_node_ip_address="127.0.0.1", **options)


def disconnect() -> None:
    """Leave Ray; a local Ray that connect() started stops, and so does its watcher."""
    import ray

    global _watcher
    ray.shutdown()
    stop_watcher(_watcher)
    _watcher = None


def check_store_for_cluster(uri: str, alive_nodes: int) -> None:
    """A local sqlite/file store lives on one machine: workers on other nodes cannot write
    it. Refuse it on a multi-node cluster and say what to use."""
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    if alive_nodes > 1 and local:
        raise TrackingError(
            f"tracking store {uri!r} is a local file but the Ray cluster has {alive_nodes} nodes: "
            "set MLFLOW_TRACKING_URI to a tracking server every node reaches "
            "(e.g. http://HEAD_IP:5000, the server ray_cluster.yaml starts on the head)"
        )


def check_local_fit(address: str | None, cpus: float, what: str) -> None:
    """A local Ray (address None) has this machine's CPUs and cannot grow: what needs more
    (`cpus`; `what` names it by its flags) would wait forever for them. Refuse it before
    anything is created; a cluster may grow, so it is not judged here."""
    if address is not None:
        return
    have = local_cpus()  # what ray.init gives a local node: cgroup-aware
    if cpus > have:
        raise ClusterError(f"{what} needs {cpus:g} CPUs but the local Ray this command starts has {have:g} "
                           "(lower them, or join a cluster with --ray-address)")


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """ray.init retries an unreachable HOST:PORT for minutes; a TCP probe fails in seconds."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"ray_address={address!r} is invalid: must be HOST:PORT, "
                           "ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"ray_address={address!r} is invalid: nothing answers there "
                           f"({e.strerror or e}); is the cluster up?") from None
