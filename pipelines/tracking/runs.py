"""A run's lifecycle, written once for every mode: a local run, a Ray Train run (its
driver owns the run, its rank 0 writes into it), a sweep trial and a distributed trial.

    with TrackedRun(client, run_id, fresh=...) as run:  # the lease first: one owner
        run.train_and_close(cfg, data, loop)

`train_and_close` is the whole sequence, and the modes differ only in `loop` (where the one loop
runs: training.in_process.InProcessLoop, distributed.trainer.RayTrainLoop):

    cfg = loop.prepare(cfg)              # what the loop needs built (evaluator, workers'
                                         # paths); a ConfigError before anything is logged
    run.start(cfg, loop.where, data)     # params, config.yaml, dataset: inside the guard
    restored = run.restore()             # outbox, newest intact checkpoint, grids,
                                         # per-kind floors, stale tags cleared
    result = loop.fit(run, cfg, restored)   # run.tracking(...) gives the loop its MLflow
                                         # callbacks; run.settle(...) sends every write
    run.close(result, cfg, shape)        # FINISHED with models, or FAILED (diverged)
    on_closed(result, model_uri)         # the caller's word after the close (Tune's report)

Leaving the block any other way closes the run exactly one way: a Tune stop (SystemExit
in a sweep trial) KILLED as pruned with its reason and GIF; Ctrl-C KILLED; any other
error FAILED with the error; TrackingLost (the server away, or the run taken over)
leaves the run as it is, and so does a PBT pause (a SystemExit in a population
member). The lease is released at the end, and only its own tags.

A process that writes into a run another process owns (a Ray Train rank 0) gets a
RunHandle from the owner and enters an AttachedRun (tracking.attached): the same restore
and callbacks, a read-only watch on the owner's lease, and no say over how the run ends.
How a run ends when no loop closes it is tracking.ending.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gan.config import RunConfig
from gan.data import Dataset
from pipelines.errors import TrackingError, TrackingLost
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks, run_callbacks, send_offline_writes
from pipelines.tracking.ending import Frames, close_early, mark_ended
from pipelines.tracking.history import (
    NoIntactCheckpoint,
    Restored,
    last_eval_step,
    last_logged_step,
    latest_checkpoint,
    logged_grids,
)
from pipelines.tracking.inputs import log_dataset
from pipelines.tracking.lease import Lease
from pipelines.tracking.models import FINAL, log_model, model_with_role
from pipelines.tracking.pictures import log_progress_gif
from pipelines.tracking.resources import log_eval_share
from pipelines.tracking.store import config_params

if TYPE_CHECKING:
    from gan.train import TrainResult


class Loop(Protocol):
    """Where a run's one loop runs. `where`: the params that say so (world size, device);
    `restores_itself`: it resumes from its own checkpoints (Ray Train's storage)."""

    restores_itself: bool

    @property
    def where(self) -> dict[str, Any]: ...

    def prepare(self, cfg: RunConfig) -> RunConfig:
        """The config this loop trains, with what it needs for it built (the evaluator,
        the workers' absolute paths); raises ConfigError for a config it cannot train."""
        ...

    def fit(self, run: TrackedRun, cfg: RunConfig, restored: Restored) -> TrainResult:
        """Train `cfg` into `run` from `restored`, every write settled (run.tracking, run.settle)."""
        ...


@dataclass(frozen=True)
class RunHandle:
    """What a process needs to write into a run another process owns (picklable)."""

    tracking_uri: str
    run_id: str
    owner: str


class TrackedRun:
    """The owner's side of one run. `fresh`: the run was just created (its config and
    dataset are logged); else it continues (restore). `prunable`: a sweep trial, where a
    SystemExit is Tune stopping it; `pruned_reason()` then says why. `before_close` runs
    on every way out, a pause included (a trial's resource figures); `on_closed(result,
    model_uri)` after `train` closed the run (a trial's last report to Tune, which may
    stop it there).
    `pausable`: a population member, where a SystemExit is Tune pausing it at a
    perturbation epoch (sweep.member; `paused_by_tune()` tells it from a stop): its writes
    land and the run stays open for its next life."""

    def __init__(self, client: Any, run_id: str, *, fresh: bool, contested: bool = False,
                 prunable: bool = False, pausable: bool = False,
                 before_close: Callable[[], None] | None = None,
                 on_closed: Callable[[TrainResult, str | None], None] | None = None,
                 warm: dict[str, Any] | None = None) -> None:
        self.client, self.run_id, self.fresh = client, run_id, fresh
        self.warm = warm  # a fresh run's starting weights (Restored.warm)
        self.contested, self.prunable, self.before_close = contested, prunable, before_close
        self.pausable = pausable
        self.on_closed = on_closed
        self.pruned_reason: Callable[[], str] = lambda: "tune: stopped by the scheduler"
        # A pausable run's SystemExit is Tune pausing it only where this says so (a member
        # handing its checkpoint to PBT); any other is a stop, closed as prunable says
        self.paused_by_tune: Callable[[], bool] = lambda: True
        self.lease = Lease(client, run_id)
        self.closed: str | None = None  # the status it was closed with
        self._tracking: MlflowCallbacks | None = None

    # ---- entering and leaving
    def __enter__(self) -> TrackedRun:
        self.lease.take(contested=self.contested)  # before anything reads the run's owner
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        lost = isinstance(error, TrackingLost)
        try:
            if lost or self.closed:
                return
            if error is None:
                self._close_failed("the run's block ended without closing it")
            elif isinstance(error, SystemExit) and self.pausable and self.paused_by_tune():
                self.pause()
            elif isinstance(error, SystemExit) and self.prunable:
                self.prune(self.pruned_reason())
            elif isinstance(error, KeyboardInterrupt):
                self._mark("KILLED", "interrupted by the user")
            else:
                self._close_failed(f"{type(error).__name__}: {error}")
        finally:
            if lost:  # the store is away or the run someone else's: touch nothing
                self.lease.stop()
            else:
                self.lease.release()

    def handle(self, tracking_uri: str) -> RunHandle:
        return RunHandle(tracking_uri, self.run_id, self.lease.owner)

    # ---- the whole sequence
    def train_and_close(self, cfg: RunConfig, data: Dataset, loop: Loop, *, omit: tuple[str, ...] = (),
              restored: Restored | None = None) -> tuple[TrainResult, str | None]:
        """Start (a new run's record), restore, fit `loop`, close; returns the loop's result
        and the final model's URI (None: the run diverged, FAILED). `restored`: already
        restored (a `--resume` needs the run's config before its data can be prepared)."""
        cfg = loop.prepare(cfg)  # before the first write: a config the loop refuses logs nothing
        if restored is None:
            self.start(cfg, loop.where, data, omit)
            restored = self.restore(checkpoint=not loop.restores_itself)
            cfg = restored.config(cfg)
        if restored.run_step is not None:
            self.client.set_tag(self.run_id, names.RESUMED_FROM_STEP, str(restored.run_step))
        result = loop.fit(self, cfg, restored)
        model_uri = self.close(result, cfg, data.shape)
        if self.on_closed is not None:
            self.on_closed(result, model_uri)
        return result, model_uri

    # ---- the steps, in order
    def start(self, cfg: RunConfig, where: dict[str, Any], data: Dataset, omit: tuple[str, ...] = ()) -> None:
        """A new run's record: the resolved config (plus where it runs, less `omit`) as
        params, all of it as config.yaml, and the dataset as an input."""
        if not self.fresh:
            return
        from mlflow.entities import Param

        params = config_params(cfg, where, omit)
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_text(self.run_id, cfg.to_yaml(), names.CONFIG_FILE)
        log_dataset(self.client, self.run_id, cfg.dataset, data)

    def restore(self, *, require_checkpoint: bool = False, checkpoint: bool = True) -> Restored:
        """Continue where the run's last life stopped: what it kept offline is sent first,
        then its newest intact checkpoint (a torn newest one falls back to the one before;
        none intact: FAILED), its grids, each metric kind's floor; its last life's error,
        stop reason and stop request are history. checkpoint=False: the loop restores its
        own (Ray Train's storage)."""
        if self.fresh:
            return Restored(warm=self.warm)
        send_offline_writes(self.client, self.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                state = latest_checkpoint(self.client, self.run_id, tmp) if checkpoint else None
            except NoIntactCheckpoint as e:
                self._mark("FAILED", str(e))
                raise TrackingError(f"--resume {self.run_id}: {e}; the run is marked FAILED") from None
            if state is None and require_checkpoint:
                raise TrackingError(f"--resume: run {self.run_id} has no checkpoint to continue from")
            frames = logged_grids(self.client, self.run_id, tmp) if state is not None else []
        run = self.client.get_run(self.run_id)
        for key in (names.ERROR, names.STOPPED_REASON, names.STOP_REQUESTED):
            if key in run.data.tags:
                self.client.delete_tag(self.run_id, key)
        if run.info.status != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        return Restored(state, last_logged_step(self.client, self.run_id),
                        last_eval_step(self.client, self.run_id), frames)

    def tracking(self, cfg: RunConfig, image_shape: tuple[int, ...], restored: Restored) -> MlflowCallbacks:
        """The loop's MLflow callbacks, writing as this lease's owner and stopping the run
        the moment the lease is taken over."""
        self._tracking = run_callbacks(self.client, self.run_id, cfg, image_shape, restored, self.lease.owner,
                                    self.lease)
        return self._tracking

    def settle(self, seconds: dict[str, Any]) -> None:
        """Every write sent, or (server away) a bounded wait then TrackingLost; then what
        periodic evaluation cost (TrainResult.seconds)."""
        if self._tracking is not None:
            self._tracking.settle()
        log_eval_share(self.client, self.run_id, seconds)

    def close(self, result: Any, cfg: RunConfig, image_shape: tuple[int, ...]) -> str | None:
        """The end of a run that trained (a TrainResult): FINISHED with its final model
        (returns its URI), or, when the health guard stopped it, FAILED with the reason
        (returns None; what it logged and its checkpoints stay, no final model)."""
        if result.diverged:
            reason = str(result.stopped)
            self._before_close()
            log_progress_gif(self.client, self.run_id, self._frames())
            self.client.set_tag(self.run_id, names.STOPPED_REASON, reason)
            self._mark("FAILED", f"diverged: {reason}")
            return None
        self._before_close()
        log_progress_gif(self.client, self.run_id, self._frames())
        # The final generator was logged at the last eval with its scores; a run without
        # one (no eval at its end, or resumed past it) logs `generator` now.
        final = model_with_role(self.client, self.run_id, FINAL)
        model_id = final.model_id if final else log_model(
            self.client, self.run_id, cfg, result.generator, image_shape, role=FINAL,
            epoch=result.epochs_done, step=result.step)
        if result.stopped:
            self.client.set_tag(self.run_id, names.STOPPED_REASON, result.stopped)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.closed = "FINISHED"
        return f"models:/{model_id}"

    def prune(self, reason: str) -> None:
        """Stopped early by Tune: its last losses land, what it cost in training and
        scoring so far, then GIF, reason, KILLED."""
        if self._tracking is not None:
            self._tracking.flush()
            seconds = self._tracking.seconds
            self._figure(lambda: log_eval_share(self.client, self.run_id, seconds))
        self._before_close()
        close_early(self.client, self.run_id, self._frames(), reason)
        self.closed = "KILLED"

    def pause(self) -> None:
        """Paused by Tune at a population's perturbation epoch: writes land, what this life
        cost is written, the run stays RUNNING."""
        if self._tracking is not None:
            self._tracking.flush()
        self._before_close()
        self.closed = "PAUSED"

    # ---- helpers
    def _frames(self) -> Frames:
        if self._tracking is not None:
            return self._tracking.frames
        with tempfile.TemporaryDirectory() as tmp:  # the loop ran elsewhere (Ray Train's rank 0)
            return logged_grids(self.client, self.run_id, tmp)

    def _before_close(self) -> None:
        if self.before_close is not None:
            hook, self.before_close = self.before_close, None  # once, whichever way it closes
            self._figure(hook)

    def _figure(self, write: Callable[[], None]) -> None:
        """Write a cost figure; one that fails is a warning, never how the run ends."""
        try:
            write()
        except Exception as e:  # noqa: BLE001 - a resource figure never hides how it ended
            print(f"warning: run {self.run_id}: {e}", file=sys.stderr)

    def _close_failed(self, message: str) -> None:
        if self._tracking is not None:
            with contextlib.suppress(Exception):  # the original error matters more
                self._tracking.flush()  # what the loop logged before the error stays
        self._before_close()
        self._mark("FAILED", message)

    def _mark(self, status: str, message: str) -> None:
        mark_ended(self.client, self.run_id, status, message)
        self.closed = status


__all__ = ["Loop", "RunHandle", "TrackedRun"]
