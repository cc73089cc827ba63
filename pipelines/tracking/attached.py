"""The Ray Train rank 0's side of a run its driver owns (tracking.runs.TrackedRun holds the
lease and decides how the run ends): the same restore and callbacks as every mode, a
read-only watch on the owner's lease, and the workers' word that the run diverged."""

from __future__ import annotations

from typing import Any

from gan.config import RunConfig
from pipelines.errors import TrackingLost
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks, run_callbacks, send_offline_writes
from pipelines.tracking.history import Restored, last_eval_step, last_logged_step
from pipelines.tracking.lease import watch_lease
from pipelines.tracking.resources import log_eval_share
from pipelines.tracking.runs import RunHandle
from pipelines.tracking.store import client_for


class AttachedRun:
    """A Ray Train rank 0's side of a run its driver owns: restore (a restarted group
    sends what its last life kept offline first), callbacks that write as the owner and
    stop when the owner's lease is lost, settle. How the run ends is the owner's call."""

    def __init__(self, handle: RunHandle) -> None:
        self.handle = handle
        self.client = client_for(handle.tracking_uri)
        self.run_id = handle.run_id
        self._tracking: MlflowCallbacks | None = None
        self._watch: Any = None

    def __enter__(self) -> AttachedRun:
        self._watch = watch_lease(self.client, self.run_id, self.handle.owner)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        try:
            if self._tracking is not None and not isinstance(error, TrackingLost):
                self._tracking.flush()
        except Exception:  # noqa: BLE001, S110 - never mask the loop's own error
            pass
        finally:
            self._watch.stop()

    def restore(self) -> Restored:
        send_offline_writes(self.client, self.run_id)
        return Restored(None, last_logged_step(self.client, self.run_id), last_eval_step(self.client, self.run_id))

    def tracking(self, cfg: RunConfig, image_shape: tuple[int, ...], restored: Restored) -> MlflowCallbacks:
        self._tracking = run_callbacks(self.client, self.run_id, cfg, image_shape, restored, self.handle.owner,
                                       self._watch)
        return self._tracking

    def settle(self, seconds: dict[str, Any]) -> None:
        if self._tracking is not None:
            self._tracking.settle()
        log_eval_share(self.client, self.run_id, seconds)

    def mark_diverged(self, reason: str) -> None:
        """Every rank stopped at the same step; the driver reads this and fails the run."""
        self.client.set_tag(self.run_id, names.STOPPED_REASON, reason)
