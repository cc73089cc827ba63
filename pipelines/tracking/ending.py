"""How a run ends when no loop closes it: a trial closed for its dead process, a sweep's
parent, a run that failed, and what a Ray Train rank 0 wrote when its loop diverged."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from gan.health import HEALTH_PREFIX
from pipelines.errors import TrackingLost
from pipelines.tracking import names
from pipelines.tracking.pictures import log_progress_gif

Frames = list[tuple[int, np.ndarray]]


def diverged_reason(client: Any, run_id: str) -> str | None:
    """The health guard's reason when a run (a Ray Train rank 0 wrote it) diverged."""
    reason = client.get_run(run_id).data.tags.get(names.STOPPED_REASON, "")
    return reason if reason.startswith(HEALTH_PREFIX) else None


def close_early(client: Any, run_id: str, frames: Frames, reason: str) -> None:
    """A run stopped before its budget by Tune (or closed for a trial whose process
    died): GIF, reason, KILLED. Never raises: a sweep goes on."""
    try:
        log_progress_gif(client, run_id, frames)
        client.set_tag(run_id, names.STOPPED_REASON, reason)
        client.set_terminated(run_id, "KILLED")
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not close run {run_id}: {e}", file=sys.stderr)


@contextlib.contextmanager
def parent_guard(client: Any, run_id: str) -> Iterator[None]:
    """A sweep's parent run (it trains nothing, holds no lease): any error inside marks
    it FAILED (Ctrl-C: KILLED) and propagates."""
    try:
        yield
    except TrackingLost:
        raise
    except KeyboardInterrupt:
        mark_ended(client, run_id, "KILLED", "interrupted by the user")
        raise
    except BaseException as e:
        mark_ended(client, run_id, "FAILED", f"{type(e).__name__}: {e}")
        raise


MARK_TRIES = 3  # a store busy for a moment (sqlite's other writer, a server blink) gets retried
QUICK_FAILURE_S = 5.0


def mark_ended(client: Any, run_id: str, status: str, message: str) -> None:
    """Mark a run ended with `message` as its error tag; never masks the original error,
    but says so when the run could not be marked (it then reads RUNNING until a resume)."""
    for attempt in range(1, MARK_TRIES + 1):
        began = time.monotonic()
        try:
            client.set_tag(run_id, names.ERROR, message[:5000])
            client.set_terminated(run_id, status)
            return
        except Exception as e:  # noqa: BLE001 - the original error matters more
            # A slow failure is a store that is away (its client already retried): no more.
            if attempt == MARK_TRIES or time.monotonic() - began > QUICK_FAILURE_S:
                print(f"warning: could not mark run {run_id} {status}: {type(e).__name__}: {e}", file=sys.stderr)
                return
            time.sleep(attempt)


__all__ = ["Frames", "close_early", "diverged_reason", "mark_ended", "parent_guard"]
