"""Where the training loop's numbers go: the `Callbacks` interface the loop calls on every
rank, a forwarding base for wrappers, and `StopTraining`, the signal a callback raises to
end a run early."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a callback to end the run early; the reason is kept in the result."""


class Diverged(StopTraining):
    """The GAN failed (non-finite losses or images, D collapse, G blow-up): the run ends
    early and is a failure, not a score."""


class Callbacks:
    """Where the loop's numbers go. The default does nothing; pipelines subclass it."""

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Per-step losses [(step, {d_loss, g_loss, D_x, D_G_z})], averaged over ranks."""

    def on_scored(self, epoch: int, step: int, generator: nn.Module, improved: bool, final: bool) -> None:
        """Just before on_eval of the same step: the generator that earned its scores (the
        live module: read it, copy what you keep). improved: its fid is the run's best so
        far; final: this is the run's last epoch."""

    def on_copies(self, epoch: int, step: int, panel: np.ndarray) -> None:
        """Rank 0, between on_scored and on_eval of an eval that improved the run's best:
        the copy-check panel of that generator (its first scored samples above their
        nearest training images; gan.metrics.copies)."""

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        """After `epoch` epochs: the fixed-latent sample grid and the eval metrics."""

    def on_seconds(self, seconds: dict[str, Any]) -> None:
        """Just before on_scored: the loop's seconds so far in training steps and in scoring
        (gan.eval_budget: train_s, eval_s), so a run stopped at this eval (a trial its
        scheduler prunes in on_eval) still knows what it cost."""

    def on_grid(self, epoch: int, step: int, grid: np.ndarray) -> None:
        """After `epoch` epochs, an eval_every epoch the eval budget did not score: the
        fixed-latent sample grid alone (drawing it takes no random numbers from training)."""

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        """A full-state checkpoint after `epoch` epochs (see gan.checkpoint)."""

    def wants_eval(self, epoch: int) -> bool:
        """Whether the scores after `epoch` epochs are needed whatever the eval budget
        (gan.eval_budget): a sweep's trial says yes at its scheduler's rungs."""
        return False

    def wants_checkpoint(self, epoch: int) -> bool:
        """Whether a checkpoint after `epoch` epochs is needed whatever checkpoint_every:
        a population member hands its state to Tune at each perturbation epoch."""
        return False

    def stop_requested(self) -> str | None:
        """Asked on every rank after each epoch: a reason to end the run there (a scheduler
        stopped its trial), else None. The ranks agree: one asking stops them all."""
        return None


class ForwardingCallbacks(Callbacks):
    """Hands every call to `inner`; a wrapper (health guard, Tune hand-off) overrides the
    calls it adds to, so a new hook needs forwarding in one place only."""

    def __init__(self, inner: Callbacks | None = None) -> None:
        self.inner = inner or Callbacks()

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        self.inner.on_metrics(rows)

    def on_scored(self, epoch: int, step: int, generator: nn.Module, improved: bool, final: bool) -> None:
        self.inner.on_scored(epoch, step, generator, improved, final)

    def on_copies(self, epoch: int, step: int, panel: np.ndarray) -> None:
        self.inner.on_copies(epoch, step, panel)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.inner.on_eval(epoch, step, grid, metrics)

    def on_seconds(self, seconds: dict[str, Any]) -> None:
        self.inner.on_seconds(seconds)

    def on_grid(self, epoch: int, step: int, grid: np.ndarray) -> None:
        self.inner.on_grid(epoch, step, grid)

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        self.inner.on_checkpoint(epoch, step, state)

    def wants_eval(self, epoch: int) -> bool:
        return self.inner.wants_eval(epoch)

    def wants_checkpoint(self, epoch: int) -> bool:
        return self.inner.wants_checkpoint(epoch)

    def stop_requested(self) -> str | None:
        return self.inner.stop_requested()


# In a training state: the run that trains from it logs step (the state's own) + shift.
SHIFT_KEY = "log_step_shift"


class ShiftedSteps(ForwardingCallbacks):
    """Hands every call on with its step moved by `shift`: a run going on from another
    run's training state (a population member that copied a better one, whose step count
    differs) logs after its own last step. Its checkpoints carry the shift (SHIFT_KEY), so
    a restart from one logs where this left off."""

    def __init__(self, inner: Callbacks | None = None, shift: int = 0) -> None:
        super().__init__(inner)
        self.shift = shift

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        self.inner.on_metrics([(s + self.shift, r) for s, r in rows] if self.shift else rows)

    def on_scored(self, epoch: int, step: int, generator: nn.Module, improved: bool, final: bool) -> None:
        self.inner.on_scored(epoch, step + self.shift, generator, improved, final)

    def on_copies(self, epoch: int, step: int, panel: np.ndarray) -> None:
        self.inner.on_copies(epoch, step + self.shift, panel)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.inner.on_eval(epoch, step + self.shift, grid, metrics)

    def on_grid(self, epoch: int, step: int, grid: np.ndarray) -> None:
        self.inner.on_grid(epoch, step + self.shift, grid)

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        self.inner.on_checkpoint(epoch, step + self.shift, {**state, SHIFT_KEY: self.shift} if self.shift else state)


__all__ = ["SHIFT_KEY", "Callbacks", "Diverged", "ForwardingCallbacks", "ShiftedSteps", "StopTraining"]
