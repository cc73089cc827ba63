"""Sending a run's writes, or keeping them while its tracking server is away.

Every write of MlflowCallbacks is an event (a dict: kind plus payload). `_deliver` sends
it; when a send fails and the store no longer answers (tracking.outage), the event and
all after it go to the run's outbox on local disk (tracking.outbox) and training goes on.
The server is looked for again at later callbacks, with backoff; once it is back the kept
events are sent in order, each once, and writing goes on as before. `settle` at the end
of training waits a bounded time for it, then raises TrackingLost (exit 1) naming where
everything is kept; `train --resume RUN_ID` sends it later.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import nn

from gan.checkpoint import checkpoint_name
from gan.config import RunConfig
from gan.step_metrics import STEP_METRICS
from pipelines.errors import TrackingError, TrackingLost
from pipelines.tracking import names
from pipelines.tracking.history import _GRID_FILE
from pipelines.tracking.models import run_models
from pipelines.tracking.outage import Outage
from pipelines.tracking.outbox import Outbox

# How long a run that ended while its server was away waits for it (then exit 1, all kept).
SETTLE_ENV = "GAN_PIPELINES_OFFLINE_WAIT_S"
SETTLE_S = 120.0


class Delivery:
    """The send-or-keep half of MlflowCallbacks; subclasses define `_send(event)` and
    `_empty_generator()` (to load a kept generator's weights into)."""

    client: Any
    run_id: str
    rank: int
    step: int
    cfg: RunConfig | None
    image_shape: tuple[int, ...] | None
    best_epoch: int | None
    model_at: tuple[int, str] | None
    lease: Any  # a Lease or LeaseWatch (tracking.lease): its `lost` stops every write

    def _init_delivery(self, owner: str | None = None) -> None:
        self.outage, self.outbox = Outage(self.client.tracking_uri), Outbox(self.run_id)
        # Who holds the run's lease (this process, or the driver of a Ray Train run): a
        # different holder after an outage means the run was taken over. Given when the
        # callbacks are built before the lease is taken; else whoever holds it now.
        self.owner = (owner or getattr(self.lease, "owner", None) or self._lease_tag()) if self.rank == 0 else None
        # Per-step metrics go out on this run's own thread, so the loop never waits on the
        # server. Not MLflow's async queue: a flush from another thread (a Tune actor
        # reused while the last trial's thread ends) can strand its batches, and a
        # confirmation that never comes would hang the run's end.
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"metrics-{self.run_id[:8]}")
        self.in_flight: list[tuple[dict, Future]] = []  # metric batches (events) not yet confirmed

    def _lease_tag(self) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(names.LEASE_OWNER)

    def _check_lease(self) -> None:
        """TrackingLost once another process took the run over (the lease saw it): nothing
        more is written, not even the metric batches still waiting for the sender."""
        lost = getattr(self.lease, "lost", None) if self.lease is not None else None
        if lost:
            for _, future in self.in_flight:
                future.cancel()
            self.in_flight = []
            raise TrackingLost(lost)

    def _send(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _empty_generator(self) -> nn.Module:
        raise NotImplementedError

    def settle(self, wait_s: float | None = None) -> None:
        """The end of training: every write confirmed, or, while the server is away, a
        bounded wait for it (progress every 10 s); TrackingLost if it does not return."""
        if self.rank != 0:
            return
        self._check_lease()
        self._confirm(wait=True)
        self.sender.shutdown(wait=False)  # idle now; a reused Ray actor must not collect threads
        if not self.outage.active:
            return
        wait_s = float(os.environ.get(SETTLE_ENV, SETTLE_S)) if wait_s is None else wait_s
        deadline, said = time.monotonic() + wait_s, 0.0
        while time.monotonic() < deadline:
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                print(f"training ended; waiting up to {deadline - said:.0f} s for tracking server "
                      f"{self.outage.where} (away for {self.outage.away_s():.0f} s)", file=sys.stderr)
            self.outage.next_look = 0.0
            if self.send_kept():
                return
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        raise TrackingLost(
            f"the tracking server is away since step {self.outage.since_step}; what the run logged since is kept "
            f"in {self.outbox.dir}: once it is back, run gan-pipeline train --resume {self.run_id}")

    def send_kept(self) -> bool:
        """Send what the outbox holds, in order, each event once; True when all is sent
        (or nothing was kept). False while the server is still away."""
        if not self.outbox.exists():
            self.outage.end()
            return True
        if not self.outage.due():
            return False
        if self.outage.server_gone():
            self.outage.begin(self.step)
            self.outage.missed()
            return False
        self._check_owner()
        done = self.outbox.sent()
        there = self._already_there()
        for event in self.outbox.pending(self._empty_generator):
            if event["kind"] == "scored" and event["improved"]:
                # A replay in another process (send_offline_writes) learns the best from the
                # log itself, so its checkpoint pruning keeps the best eval's checkpoint.
                self.best_epoch = int(event["epoch"])
            try:
                unsent = self._unsent(event, there)
                if unsent is not None:
                    self._send(unsent)
            except Exception:
                if not self.outage.server_gone():
                    raise
                self.outage.missed()
                return False
            done += 1
            self.outbox.mark_sent(done)
        away = f" (away {self.outage.away_s():.0f} s)" if self.outage.active else ""
        self.outbox.clear()
        self.outage.end()
        print(f"tracking server {self.outage.where}{away}: sent the {done} writes of run {self.run_id} kept "
              "on local disk while it was away", file=sys.stderr)
        return True

    def _already_there(self) -> dict[str, Any]:
        """What the server holds: the write that was in flight when it went away may have
        landed though its answer never came back (at-least-once), so a replay skips it."""
        models = {int(m.tags.get(names.MODEL_STEP, -1)): m.model_id for m in run_models(self.client, self.run_id)}
        steps = {key: {m.step for m in self.client.get_metric_history(self.run_id, key)}
                 for key in (STEP_METRICS[0], names.EPOCH)}  # every step: batches may land out of order
        return {"losses": steps[STEP_METRICS[0]], "evals": steps[names.EPOCH], "models": models,
                "images": self._image_steps()}

    def _image_steps(self) -> set[int]:
        """The steps of the sample grids the run holds (log_image gives each call a new
        file, so a grid sent twice would show twice on the run page's slider)."""
        found = (_GRID_FILE.match(Path(a.path).name) for a in self.client.list_artifacts(self.run_id, names.IMAGES_DIR))
        return {int(m.group(1)) for m in found if m}

    def _unsent(self, event: dict[str, Any], there: dict[str, Any]) -> dict[str, Any] | None:
        """The part of a kept event the server does not hold yet (None: all of it is there)."""
        kind, step = event["kind"], int(event.get("step", 0))
        if kind == "metrics":
            rows = [(s, r) for s, r in event["rows"] if s not in there["losses"]]
            return {**event, "rows": rows} if rows else None
        if kind == "eval" and step in there["evals"]:
            return None
        if kind == "scored" and step in there["models"]:
            self.model_at = (step, there["models"][step])  # its eval's scores link to it
            return None
        if kind in ("grid", "eval") and step in there["images"]:  # an eval's grid landed, its scores not
            return {**event, "image_there": True}
        return event

    def _deliver(self, event: dict[str, Any]) -> None:
        if not self._exchange(lambda: self._send(event)):
            self._keep(event)

    def read_tag(self, key: str) -> str | None:
        """A tag of the run as the server holds it now; None while the server is away
        (the read starts the outage, as a failed write does, and training goes on: a
        read on the training path never fails a run because the server went away)."""
        found: list[str | None] = []
        self._exchange(lambda: found.append(self.client.get_run(self.run_id).data.tags.get(key)))
        return found[0] if found else None

    def _exchange(self, call: Callable[[], None]) -> bool:
        """One call to the server, made only while it answers: False while it is away and
        when this call finds it gone (the outage starts here); any other failure propagates."""
        self._check_lease()
        if self.outage.active and not self.send_kept():
            return False
        try:
            call()
        except TrackingError:
            raise
        except Exception as e:
            if not self.outage.server_gone():
                raise
            self._went_away(e)
            return False
        return True

    def _went_away(self, error: Exception) -> None:
        if not self.outage.begin(self.step):
            return
        self.outbox.open(self.cfg.to_dict() if self.cfg else None, self.image_shape, f"{type(error).__name__}")
        print(f"warning: tracking server {self.outage.where} does not answer at step {self.step}: training goes "
              f"on; what the run logs is kept in {self.outbox.dir} until it is back", file=sys.stderr)

    def _keep(self, event: dict[str, Any]) -> None:
        self.outbox.keep(event)
        if event["kind"] == "checkpoint" and self.cfg is not None:
            self.outbox.drop_checkpoints(self.cfg.keep_checkpoints,
                                         checkpoint_name(self.best_epoch) if self.best_epoch else None)

    def _confirm(self, wait: bool = False) -> None:
        """Metric batches the sender could not send are delivered again (or kept)."""
        still = []
        for event, future in self.in_flight:
            if not wait and not future.done():
                still.append((event, future))
            elif future.exception() is not None:  # the sender's calls end: MLflow's HTTP retries are bounded
                self._deliver(event)
        self.in_flight = still

    def flush(self) -> None:
        """Every metric batch sent or kept (a pruned trial, before its run closes)."""
        if self.rank == 0:
            self._confirm(wait=True)

    def _check_owner(self) -> None:
        """Back after an outage: if another process took the run over meanwhile (its lease
        went stale while this one could not beat), this one must stop writing."""
        owner = self.client.get_run(self.run_id).data.tags.get(names.LEASE_OWNER, "")
        host, pid = (owner.split(":") + ["", ""])[:2]
        if owner and self.owner and owner != self.owner:
            raise TrackingLost(f"run {self.run_id} was taken over by {host} pid {pid} while its tracking server "
                                f"was away; this process stops; what it trained offline stays in {self.outbox.dir}")
