"""A run has one owner at a time: a lease held in the run's tags.

The owner (host:pid:token) writes `gan.lease.owner` and refreshes `gan.lease.heartbeat`
(unix seconds) every HEARTBEAT_S from a daemon thread while it trains. A lease is fresh
for STALE_AFTER_S after its last heartbeat: `--resume` refuses a run with a fresh lease
(someone is still training it) and takes over one whose owner died (kill -9, a lost
machine). Two resumes racing for the same run: both write, wait SETTLE_S, read back, and
only the one whose write survived goes on.
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

from pipelines.errors import TrackingError, TrackingLost
from pipelines.tracking import names

# A lease goes stale this long after its owner's last heartbeat (tests shorten it).
STALE_AFTER_S = float(os.environ.get("GAN_PIPELINES_LEASE_TIMEOUT_S", "45"))
HEARTBEAT_S = STALE_AFTER_S / 4
SETTLE_S = 1.5


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder(run: Any, now: float | None = None) -> tuple[str, float] | None:
    """(owner, seconds since its heartbeat) when the run's lease is fresh, else None."""
    tags = run.data.tags
    owner, beat = tags.get(names.LEASE_OWNER), tags.get(names.LEASE_HEARTBEAT)
    if not owner or not beat:
        return None
    age = (now or time.time()) - float(beat)
    return (owner, age) if age < STALE_AFTER_S else None


def check_free(run: Any) -> None:
    """TrackingError (exit 2) naming the owner when someone is still training `run`."""
    held = holder(run)
    if held:
        owner, age = held
        host, pid = (owner.split(":") + ["?", "?"])[:2]
        raise TrackingError(
            f"run {run.info.run_id} is being trained by {host} pid {pid} (heartbeat {age:.0f} s ago): "
            f"wait for it to end, or stop that process; a lease expires {STALE_AFTER_S:.0f} s after "
            "its owner's last heartbeat")


@contextlib.contextmanager
def lease(client: Any, run_id: str, *, contested: bool = False) -> Iterator[str]:
    """Hold the run's lease while the body runs; released (tags deleted) at the end.

    contested: another process may be taking the same run (a resume): confirm the write
    survived before going on."""
    owner = new_owner()
    _beat(client, run_id, owner)
    if contested:
        time.sleep(SETTLE_S)
        now = client.get_run(run_id).data.tags.get(names.LEASE_OWNER)
        if now != owner:
            check_free(client.get_run(run_id))  # names the winner
            raise TrackingError(f"run {run_id} was taken by another resume at the same moment")
    stop = threading.Event()
    thread = threading.Thread(target=_keep_alive, args=(client, run_id, owner, stop), daemon=True,
                              name=f"lease-{run_id[:8]}")
    thread.start()
    release = True
    try:
        yield owner
    except TrackingLost:  # the store is away or the run is someone else's now: leave the tags
        release = False
        raise
    finally:
        stop.set()
        thread.join(timeout=5)
        if release:
            with contextlib.suppress(Exception):  # a lost store: the lease simply goes stale
                client.delete_tag(run_id, names.LEASE_HEARTBEAT)
                client.delete_tag(run_id, names.LEASE_OWNER)


def _beat(client: Any, run_id: str, owner: str) -> None:
    client.set_tag(run_id, names.LEASE_OWNER, owner)
    client.set_tag(run_id, names.LEASE_HEARTBEAT, f"{time.time():.0f}")


def _keep_alive(client: Any, run_id: str, owner: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(Exception):  # the store may blink; the next beat retries
            client.set_tag(run_id, names.LEASE_HEARTBEAT, f"{time.time():.0f}")
