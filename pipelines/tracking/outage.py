"""Is the tracking server away, and when to look for it again.

A write that fails is only an outage when the store itself no longer answers (the same
bounded probe the CLI runs at start); any other failure is a real error and propagates.
While away, the server is looked for at the loop's own callbacks, with backoff, so a
run never blocks on MLflow's retries more than once.
"""

from __future__ import annotations

import time

from pipelines.errors import TrackingError
from pipelines.tracking.store import probe_store, redact

FIRST_LOOK_S = 2.0
MAX_LOOK_S = 30.0
PROBE_S = 3.0


class Outage:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.since: float | None = None  # when it went away (None: it is there)
        self.since_step = 0
        self.wait = FIRST_LOOK_S
        self.next_look = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    @property
    def where(self) -> str:
        return redact(self.uri)

    def server_gone(self) -> bool:
        try:
            probe_store(self.uri, timeout_s=PROBE_S)
        except TrackingError:
            return True
        return False

    def begin(self, step: int) -> bool:
        """Mark the server away from `step`; True the first time (say it once)."""
        first = self.since is None
        if first:
            self.since, self.since_step, self.wait = time.time(), step, FIRST_LOOK_S
        self.next_look = time.monotonic() + self.wait
        return first

    def due(self) -> bool:
        return time.monotonic() >= self.next_look

    def missed(self) -> None:
        """Looked and it was not there: look again later, up to every MAX_LOOK_S."""
        self.wait = min(self.wait * 2, MAX_LOOK_S)
        self.next_look = time.monotonic() + self.wait

    def away_s(self) -> float:
        return time.time() - self.since if self.since is not None else 0.0

    def end(self) -> None:
        self.since = None
