"""One owner per run, against a real sqlite MLflow store: a lease taken over while its
owner was stopped is never beaten nor released by that owner again, a lease whose owner
process is dead (or whose pid now names another process) is free at once, a live
owner's lease is still refused, and the run's callbacks stop writing once the lease is
lost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
from conftest import store_with_run

from pipelines.errors import TrackingError, TrackingLost
from pipelines.tracking import lease as leases
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks
from pipelines.tracking.outbox import Outbox

HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def fast_lease(monkeypatch, tmp_path):
    # what GAN_PIPELINES_LEASE_TIMEOUT_S=2 would give, without reloading the module
    monkeypatch.setattr(leases, "STALE_AFTER_S", 2.0)
    monkeypatch.setattr(leases, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(leases, "SETTLE_S", 0.1)
    monkeypatch.setenv("GAN_PIPELINES_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def store(tmp_path):
    return store_with_run(tmp_path, "lease")


def tags(client, run_id) -> dict[str, str]:
    return client.get_run(run_id).data.tags


def take_over(client, run_id, owner: str = "otherhost:4242:1700000000.00:cafe0001") -> str:
    """What a `train --resume` elsewhere writes once this owner's lease looked stale."""
    client.set_tag(run_id, names.LEASE_OWNER, owner)
    client.set_tag(run_id, names.LEASE_HEARTBEAT, f"{time.time():.0f}")
    return owner


def write_lease(client, run_id, owner: str) -> None:
    client.set_tag(run_id, names.LEASE_OWNER, owner)
    client.set_tag(run_id, names.LEASE_HEARTBEAT, f"{time.time():.0f}")  # fresh


def until(predicate, timeout: float = 5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def start_of(pid: int) -> str:
    return f"{psutil.Process(pid).create_time():.2f}"


def test_the_owner_names_host_pid_and_process_start(store):
    client, run_id = store
    held = leases.Lease(client, run_id)
    host, pid, start, token = held.owner.split(":")
    assert (host, int(pid), start) == (HOST, os.getpid(), start_of(os.getpid())) and token
    assert str(held) == held.owner


def test_a_taken_over_lease_stops_beating_and_says_who_took_it(store):
    client, run_id = store
    held = leases.Lease(client, run_id)
    held.take()
    try:
        assert tags(client, run_id)[names.LEASE_OWNER] == held.owner and held.lost is None
        take_over(client, run_id)
        lost = until(lambda: held.lost)
        client.set_tag(run_id, names.LEASE_HEARTBEAT, "1")  # the new owner's beat, recognisably
        assert "otherhost" in lost and "4242" in lost and "\n" not in lost
        time.sleep(5 * leases.HEARTBEAT_S)
        assert tags(client, run_id)[names.LEASE_HEARTBEAT] == "1"  # no beat over the new owner's
    finally:
        held.release()


def test_release_after_a_takeover_leaves_the_new_owners_lease(store):
    client, run_id = store
    with leases.lease(client, run_id) as mine:
        assert tags(client, run_id)[names.LEASE_OWNER] == str(mine)
        theirs = take_over(client, run_id)
    assert tags(client, run_id)[names.LEASE_OWNER] == theirs
    assert names.LEASE_HEARTBEAT in tags(client, run_id)


def test_a_lease_is_released_by_its_owner(store):
    client, run_id = store
    with leases.lease(client, run_id, contested=True):
        assert names.LEASE_OWNER in tags(client, run_id)
    assert names.LEASE_OWNER not in tags(client, run_id) and names.LEASE_HEARTBEAT not in tags(client, run_id)


def test_a_watch_sees_the_takeover_and_never_writes(store):
    client, run_id = store
    with leases.lease(client, run_id) as mine:
        watch = leases.watch_lease(client, run_id, mine.owner)
        try:
            time.sleep(3 * leases.HEARTBEAT_S)
            assert watch.lost is None
            take_over(client, run_id)
            assert "4242" in until(lambda: watch.lost)
        finally:
            watch.stop()


def test_a_lease_whose_owner_process_is_dead_is_free_at_once(store):
    client, run_id = store
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lease(client, run_id, f"{HOST}:{dead.pid}:{time.time():.2f}:dead0001")
    assert leases.holder(client.get_run(run_id)) is None
    leases.check_free(client.get_run(run_id))
    write_lease(client, run_id, f"{HOST}:{dead.pid}:dead0002")  # the owner format before start times
    leases.check_free(client.get_run(run_id))
    with leases.lease(client, run_id, contested=True) as mine:  # `train --resume` right after kill -9
        assert tags(client, run_id)[names.LEASE_OWNER] == mine.owner


def test_a_reused_pid_is_free(store):
    client, run_id = store
    other = os.getppid()  # alive, but not the process that wrote the lease: it started later
    write_lease(client, run_id, f"{HOST}:{other}:{float(start_of(other)) - 100:.2f}:reused01")
    assert leases.holder(client.get_run(run_id)) is None


def test_a_live_foreign_owner_is_still_refused(store):
    client, run_id = store
    other = os.getppid()
    for owner in (f"{HOST}:{other}:{start_of(other)}:alive001", f"{HOST}:{other}:alive002"):
        write_lease(client, run_id, owner)
        with pytest.raises(TrackingError, match=rf"being trained by {HOST} pid {other} \(heartbeat"):
            leases.check_free(client.get_run(run_id))


def test_callbacks_stop_writing_once_the_lease_is_lost(store):
    client, run_id = store
    held = leases.Lease(client, run_id)
    callbacks = MlflowCallbacks(client, run_id, owner=held.owner, lease=held)  # built before the lease
    held.take()
    try:
        callbacks.on_metrics([(1, {"d_loss": 1.0})])
        callbacks.flush()
        take_over(client, run_id)
        until(lambda: held.lost)
        with pytest.raises(TrackingLost, match="4242"):
            callbacks.on_metrics([(2, {"d_loss": 2.0})])
        with pytest.raises(TrackingLost, match="4242"):
            callbacks.on_checkpoint(1, 2, {})
        assert [m.step for m in client.get_metric_history(run_id, "d_loss")] == [1]
    finally:
        held.release()


def test_callbacks_built_before_the_lease_see_a_takeover_after_an_outage(store):
    client, run_id = store
    mine = leases.Lease(client, run_id)
    callbacks = MlflowCallbacks(client, run_id, owner=mine.owner)  # no lease tag yet
    mine.take()
    try:
        outbox = Outbox(run_id)  # what it kept while the server was away
        outbox.open(None, None, "test")
        outbox.keep({"kind": "metrics", "rows": [(1, {"d_loss": 1.0})], "ts": 1})
        take_over(client, run_id)
        with pytest.raises(TrackingLost, match="taken over by otherhost pid 4242"):
            callbacks.send_kept()
    finally:
        mine.release()
