"""A run has one owner at a time: a lease held in the run's tags.

The owner (host:pid:start:token, start being the process's start time) writes
`gan.lease.owner` and refreshes `gan.lease.heartbeat` (unix seconds) every HEARTBEAT_S
from a daemon thread while it trains. A lease is fresh for STALE_AFTER_S after its last
heartbeat: `--resume` refuses a run with a fresh lease (someone is still training it) and
takes over one whose owner died (kill -9, a lost machine). An owner on this host whose
process is gone (or whose pid now names a process started at another time) holds nothing,
at once: a resume right after kill -9 need not wait out the heartbeat. Two resumes racing
for the same run: both write, wait SETTLE_S, read back, and only the one whose write
survived goes on.

An owner that was stopped (SIGSTOP, a frozen VM) longer than the lease lasts may find
its run taken over when it wakes: its heartbeat reads the owner tag before each beat,
stops beating once it names someone else, and says so in `Lease.lost`; its release then
leaves the new owner's tags alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil

from pipelines.errors import TrackingError, TrackingLost
from pipelines.tracking import names

# A lease goes stale this long after its owner's last heartbeat (tests shorten it).
STALE_AFTER_S = float(os.environ.get("GAN_PIPELINES_LEASE_TIMEOUT_S", "45"))
HEARTBEAT_S = STALE_AFTER_S / 4
SETTLE_S = 1.5
# Two reads of one process's start time may differ by the jitter of the kernel's boot
# time (psutil adds it to the start tick); a reused pid starts far later than that.
START_SLACK_S = 1.0


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}:{uuid.uuid4().hex[:8]}"


def _start_time(pid: int) -> str:
    """The process's start time as the owner string holds it (no ':' in it)."""
    return f"{psutil.Process(pid).create_time():.2f}"


def _host_pid(owner: str) -> tuple[str, str]:
    host, pid = (owner.split(":") + ["?", "?"])[:2]
    return host, pid


def owner_alive(owner: str) -> bool:
    """False when the owner is a process of this host that is gone: its pid does not
    exist, is a zombie, or names a process started at another time than the recorded
    one (the pid was reused). Owners on other hosts, and the old host:pid:token format's
    start-less owners past the pid check, count as alive: only their heartbeat tells."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return True
    start = parts[2] if len(parts) >= 4 else None
    try:
        process = psutil.Process(int(parts[1]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return start is None or abs(process.create_time() - float(start)) <= START_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, ValueError):  # cannot tell: trust the heartbeat
        return True


def holder(run: Any, now: float | None = None) -> tuple[str, float] | None:
    """(owner, seconds since its heartbeat) when the run's lease is fresh and its owner
    may still run, else None."""
    tags = run.data.tags
    owner, beat = tags.get(names.LEASE_OWNER), tags.get(names.LEASE_HEARTBEAT)
    if not owner or not beat:
        return None
    age = (now or time.time()) - float(beat)
    return (owner, age) if age < STALE_AFTER_S and owner_alive(owner) else None


def check_free(run: Any) -> None:
    """TrackingError (exit 2) naming the owner when someone is still training `run`."""
    held = holder(run)
    if held:
        owner, age = held
        host, pid = _host_pid(owner)
        raise TrackingError(
            f"run {run.info.run_id} is being trained by {host} pid {pid} (heartbeat {age:.0f} s ago): "
            f"wait for it to end, or stop that process; a lease expires {STALE_AFTER_S:.0f} s after "
            "its owner's last heartbeat")


def _lost_reason(client: Any, run_id: str, owner: str) -> str | None:
    """One line when the run's owner tag no longer names `owner`, else None."""
    now = client.get_run(run_id).data.tags.get(names.LEASE_OWNER)
    if now == owner:
        return None
    if not now:
        return f"run {run_id}: its lease was removed while this process held it; this process stops writing to it"
    host, pid = _host_pid(now)
    return (f"run {run_id} was taken over by {host} pid {pid} (this process's lease went stale while it "
            "could not beat); this process stops writing to it")


class Lease:
    """This process's lease on one run: `take` it, `release` it; `lost` says (one line)
    when another process took the run over, after which this one must stop writing."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id, self.owner = client, run_id, new_owner()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __str__(self) -> str:
        return self.owner

    def take(self, contested: bool = False) -> Lease:
        """Write the lease and keep it alive. contested: another process may be taking the
        same run (a resume): confirm the write survived before going on."""
        self._write()
        if contested:
            time.sleep(SETTLE_S)
            if self.client.get_run(self.run_id).data.tags.get(names.LEASE_OWNER) != self.owner:
                check_free(self.client.get_run(self.run_id))  # names the winner
                raise TrackingError(f"run {self.run_id} was taken by another resume at the same moment")
        self._thread = threading.Thread(target=self._keep_alive, daemon=True, name=f"lease-{self.run_id[:8]}")
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop beating; delete the tags only while they are still this owner's (a run
        taken over meanwhile keeps its new owner's lease)."""
        self.stop()
        with contextlib.suppress(Exception):  # a lost store: the lease simply goes stale
            if self.client.get_run(self.run_id).data.tags.get(names.LEASE_OWNER) == self.owner:
                self.client.delete_tag(self.run_id, names.LEASE_HEARTBEAT)
                self.client.delete_tag(self.run_id, names.LEASE_OWNER)

    def stop(self) -> None:
        """Stop beating and leave the tags as they are (they go stale, or are someone else's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _write(self) -> None:
        self.client.set_tag(self.run_id, names.LEASE_OWNER, self.owner)
        self.client.set_tag(self.run_id, names.LEASE_HEARTBEAT, f"{time.time():.0f}")

    def _keep_alive(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # the store may blink; the next beat retries
                self.lost = _lost_reason(self.client, self.run_id, self.owner)
                if self.lost:
                    return
                self.client.set_tag(self.run_id, names.LEASE_HEARTBEAT, f"{time.time():.0f}")


class LeaseWatch:
    """Reads (never writes) the owner tag of a run another process holds the lease of (a
    Ray Train rank 0 whose driver holds it): `lost` says when someone else took it over."""

    def __init__(self, client: Any, run_id: str, owner: str) -> None:
        self.client, self.run_id, self.owner = client, run_id, owner
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"lease-watch-{run_id[:8]}")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # the store may blink; the next look retries
                self.lost = _lost_reason(self.client, self.run_id, self.owner)
                if self.lost:
                    return


def watch_lease(client: Any, run_id: str, owner: str) -> LeaseWatch:
    """Watch `owner`'s lease on the run from another process; `.stop()` when done."""
    return LeaseWatch(client, run_id, owner)


@contextlib.contextmanager
def lease(client: Any, run_id: str, *, contested: bool = False) -> Iterator[Lease]:
    """Hold the run's lease while the body runs; released (tags deleted, if still this
    owner's) at the end. See Lease.take for `contested`."""
    held = Lease(client, run_id).take(contested=contested)
    release = True
    try:
        yield held
    except TrackingLost:  # the store is away or the run is someone else's now: leave the tags
        release = False
        raise
    finally:
        if release:
            held.release()
        else:
            held.stop()
