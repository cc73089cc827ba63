"""How a distributed sweep trial learns that Tune stopped it. Its Ray Train workers report
to Tune through the trial actor's main thread (TuneReportCallback's queue), so Tune's stop
never raises in the thread running fit(), as it does in a one-worker trial's report():
this module watches the trial's session for it and turns it into a cooperative stop.
Ray offers no public API for it: Ray's own session object is read through
pipelines.compat.ray_api, which fails loudly (InternalsChanged) rather than guess when it
is not there (tests/test_lifecycle.py pins the behaviour, tests/test_compat.py the API)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from pipelines.compat import ray_api
from pipelines.tracking import names

# The epoch of the last result this process's trainable handed to Tune (trial.ClosesItsRun
# .train): the one Tune judged when it stops the trial, as Tune asks a trial for no further
# result once it decided to stop it. Its workers may have logged a later epoch by the time
# the stop reaches this process (they train on while the report travels to the driver).
_handed: dict[str, int] = {}


def handed_to_tune(result: dict[str, Any]) -> None:
    """Called with every result the trainable returns to Tune."""
    if names.EPOCH in result:
        _handed[names.EPOCH] = int(result[names.EPOCH])


def forget_handed() -> None:
    """A new trial in this (reused) actor: nothing of it was judged yet."""
    _handed.clear()


class TuneStopWatch:
    """A distributed trial's ear for Tune's stop. Its workers report through this actor's
    main thread (TuneReportCallback's queue), so Tune's stop never raises in the thread
    running fit(): this watch sees the session's stop, asks the workers to end after
    their epoch (the run's STOP_REQUESTED tag, read by rank 0, agreed by all ranks), and
    drains the report queue nobody reads any more so the Train run can finish. The trial
    then closes its run as pruned."""

    POLL_S = 0.5

    def __init__(self, client: Any, run_id: str, reason: Callable[[], str]) -> None:
        self.client, self.run_id, self.reason = client, run_id, reason
        self.session = ray_api.trial_session()  # InternalsChanged when Ray has none: never "stopped"
        self.stopped = False
        self.why: str | None = None  # the stop reason, as of the moment Tune stopped it
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"tune-stop-{run_id[:8]}")

    def __enter__(self) -> TuneStopWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def tune_stopped(self) -> bool:
        """Whether Tune has stopped this trial. A distributed trial's workers report to Tune
        through its actor's main thread, so Tune's stop ends that actor (and the Train run it
        owns) rather than raising in the thread that runs fit(): fit() then fails, and that
        failure is a prune, not a crash. Read from the session this trial started with."""
        return ray_api.session_stopped(self.session)

    def _watch(self) -> None:
        while not self._done.wait(self.POLL_S):
            if not self.stopped and self.tune_stopped():
                self.stopped = True
                with contextlib.suppress(Exception):  # else the workers run to their end
                    self.why = self.reason()
                    self.client.set_tag(self.run_id, names.STOP_REQUESTED, self.why)
            if self.stopped:
                self._drain()

    def _drain(self) -> None:
        queue = ray_api.report_queue(self.session)
        if queue is None:  # no worker reported yet
            return
        with contextlib.suppress(Exception):  # Empty ends it; a queue actor gone too
            while True:
                queue.get_nowait()


class TuneStoppableLoop:
    """A distributed trial's loop (tracking.runs.Loop) that ends as pruned when Tune stops
    it: a SystemExit out of fit, which the trial's TrackedRun closes KILLED with the
    reason as of the moment Tune stopped it (`reason(epoch)` of the epoch Tune judged it
    at, not the one its workers stopped after)."""

    def __init__(self, inner: Any, reason: Callable[[int], str]) -> None:
        self.inner, self.reason = inner, reason
        self.restores_itself = inner.restores_itself

    @property
    def where(self) -> dict[str, Any]:
        return self.inner.where

    def prepare(self, cfg: Any) -> Any:
        # Ray Train reports at checkpoints: checkpointing at every eval puts `fid` in each
        # report. The workers report to Tune at each eval: no eval budget, every
        # eval_every epoch scores.
        return self.inner.prepare(dataclasses.replace(cfg, checkpoint_every=cfg.eval_every, eval_budget=0.0))

    def fit(self, run: Any, cfg: Any, restored: Any) -> Any:
        def judged_at() -> str:  # the epoch of the last result Tune got: the one it judged
            epoch = _handed.get(names.EPOCH)
            if epoch is None:  # stopped before any result of this life reached Tune
                epoch = int(run.client.get_run(run.run_id).data.metrics.get(names.EPOCH, 0))
            return self.reason(epoch)

        with TuneStopWatch(run.client, run.run_id, judged_at) as watch:
            run.pruned_reason = lambda: watch.why or judged_at()
            try:
                result = self.inner.fit(run, cfg, restored)
            except Exception:
                if watch.stopped or watch.tune_stopped():  # Tune ended this trial's actor, and its Train run
                    raise SystemExit(0) from None
                raise
        if watch.stopped:  # the workers stopped at an epoch's end, as Tune asked: pruned
            raise SystemExit(0)
        return result
