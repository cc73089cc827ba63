"""What a sweep trial tells Tune: TuneCallbacks hands each eval's scores to Tune (and a
population member's checkpoint at its perturbation epochs) after MLflow has them, and
report() sends them with the trial's MLflow run name."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gan.callbacks import SHIFT_KEY, Callbacks, ShiftedSteps
from pipelines.sweep.naming import TUNE_NAME_KEY
from pipelines.tracking import names

if TYPE_CHECKING:
    from gan.train import TrainResult


class TuneCallbacks(ShiftedSteps):
    """MLflow first, then each eval's scores to Tune (ASHA and Optuna read `fid`).

    The last epoch's scores are reported after the run is closed (`closed`): a report is
    where Tune stops a trial, and a trial that has trained its whole budget must keep its
    checkpoint and model even when ASHA ranks it low at that rung. A distributed trial's
    workers report their evals themselves (TuneReportCallback): `reports_evals` False.

    A population member (`perturb`: its perturbation epochs) reports those epochs' scores
    with its checkpoint (hand_over, after on_checkpoint, which follows on_eval), for PBT to
    compare and copy; every step it hands on is its run's (training step + `shift`, member.py)."""

    def __init__(self, rungs: tuple[int, ...] = (), reports_evals: bool = True,
                 perturb: tuple[int, ...] = ()) -> None:
        super().__init__(Callbacks())
        self.name = ""  # the run's name, sent with each report for the driver's progress lines
        self.rungs, self.reports_evals = set(rungs) | set(perturb), reports_evals
        self.perturb = set(perturb)
        self.member: dict[str, Any] = {}  # who writes a member's checkpoints (member.write_checkpoint)
        # Set while a member hands its checkpoint over: a SystemExit then is PBT pausing it;
        # anywhere else Tune stopped it (PBT never stops a member: the sweep's driver did)
        self.handing_over = False
        self.epoch, self.final = 0, False
        self.last: dict[str, float] = {}
        self.first_step: float | None = None  # when the first step's losses came

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        if rows and self.first_step is None:
            self.first_step = time.time()
        super().on_metrics(rows)

    def on_scored(self, epoch: int, step: int, generator: Any, improved: bool, final: bool) -> None:
        super().on_scored(epoch, step, generator, improved, final)
        self.final = final

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        super().on_eval(epoch, step, grid, metrics)
        self.scored(epoch, step + self.shift, metrics)
        if not self.final and epoch not in self.perturb:
            # Tune ends a pruned trial by raising SystemExit out of report(): the run's
            # TrackedRun closes it KILLED as pruned.
            report(self.last, self.name)

    def scored(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """The scores the next report carries (`step`: the run's)."""
        self.epoch = epoch
        self.last = {names.FID: math.nan, **{k: float(v) for k, v in metrics.items()},
                     names.EPOCH: epoch, "step": step}

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        super().on_checkpoint(epoch, step, state)
        if epoch in self.perturb and not self.final:
            self.hand_over(epoch, {**state, SHIFT_KEY: self.shift})

    def hand_over(self, epoch: int, state: dict[str, Any]) -> None:
        """This perturbation epoch's scores with the member's checkpoint: PBT pauses the
        member here (SystemExit out of report: TrackedRun.pause) and may hand the
        checkpoint to a weaker one."""
        from pathlib import Path

        from ray.tune import Checkpoint

        from pipelines.sweep.member import write_checkpoint

        with tempfile.TemporaryDirectory(prefix="gan-member-") as tmp:
            folder = write_checkpoint(Path(tmp), state, {**self.member, "epoch": epoch})
            self.handing_over = True  # left set when PBT pauses it here (SystemExit out of report)
            report({**self.last, names.PBT_EPOCH: epoch}, self.name, Checkpoint.from_directory(str(folder)))
            self.handing_over = False  # PBT let it go on

    def wants_eval(self, epoch: int) -> bool:
        return epoch in self.rungs or self.inner.wants_eval(epoch)

    def wants_checkpoint(self, epoch: int) -> bool:
        return epoch in self.perturb or self.inner.wants_checkpoint(epoch)

    def wrapping(self, inner: Callbacks) -> TuneCallbacks:
        """This hand-off around the run's own callbacks (the in-process loop builds those)."""
        self.inner = inner
        return self

    def closed(self, result: TrainResult, model_uri: str | None, logged: Callable[[], dict[str, float]]) -> None:
        """After the run closed: a diverged run says so (the sweep goes on); a finished one
        reports its last scores (`logged()`: a trial resumed after its last eval)."""
        if model_uri is None:
            report({names.FID: math.nan, names.BEST_FID: self.last.get(names.BEST_FID, math.nan),
                    names.EPOCH: result.epochs_done, "step": result.step, "stopped": 1}, self.name)
        elif self.reports_evals:
            report({**(self.last or logged()), names.EPOCH: result.epochs_done, "step": result.step}, self.name)


def train_to_tune(name: str = "") -> Any:
    """Ray Train's TuneReportCallback (its workers' reports to the trial's Tune session),
    less those at the epochs where a population member's workers stop: the trial hands
    those to Tune itself, with its checkpoint (sweep.member.PausingLoop). Each carries the
    trial's run `name`, as a one-worker trial's reports do (report()). Made in the trial
    (the callback finds its Tune session when made)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.distributed.worker import PAUSED_KEY

    class ForwardsToTune(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if not metrics[0].get(PAUSED_KEY):
                named = [{**metrics[0], TUNE_NAME_KEY: name}, *metrics[1:]] if name else metrics
                super().after_report(run_context, named, checkpoint)

    return ForwardsToTune()


PRUNED_PREFIX = "tune: stopped by the scheduler"  # every pruned trial's reason starts so


def pruned_reason(epoch: int) -> str:
    """ASHA's: a trial Tune stopped at a rung (its own close, or the driver's for it)."""
    return f"{PRUNED_PREFIX} after epoch {epoch} (its FID was not competitive)"


# A population member's end before its budget (never "tune:", which reads as pruned by
# ASHA: the sweep's notes, and a warm start's seeds, take it so). PBT never stops a member,
# it pauses it at each perturbation epoch: a member Tune stops is one the sweep's driver
# stopped (interrupted, or Tune ending its run with the member still training).
STOPPED_BY_DRIVER = "driver:"


def member_stopped_reason(epoch: int) -> str:
    """A member's own close when Tune stopped it outside a PBT pause."""
    return (f"{STOPPED_BY_DRIVER} the sweep's driver stopped this population member after epoch {epoch} "
            "(PBT pauses and copies members; it never stops one)")


def member_unfinished_reason(epoch: int) -> str:
    """The driver's close of a member whose run Tune left open without an error: paused by
    PBT, or its process gone, when the sweep's Tune run ended."""
    return (f"{STOPPED_BY_DRIVER} the sweep ended with this population member unfinished after epoch {epoch} "
            "(paused by PBT or its process ended; PBT never stops a member)")


def report(metrics: dict[str, float], name: str = "", checkpoint: Any = None) -> None:
    """Scores to Tune; with the trial's MLflow run name, which the driver's progress lines
    print (tuning.shown_name), so the console and the runs table name a trial alike."""
    from ray import tune

    tune.report({**metrics, TUNE_NAME_KEY: name} if name else metrics, checkpoint=checkpoint)
