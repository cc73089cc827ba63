"""Training health: stop a run whose GAN has visibly failed, with the reason.

`HealthGuard` wraps any Callbacks object, watches the per-step losses the loop hands to
on_metrics and raises gan.callbacks.Diverged(reason) when they become NaN/inf, when D's
loss collapses to ~0 for a sustained window (D wins outright, G gets no gradient) or
when G's loss explodes for a sustained window. The loop ends cleanly on StopTraining
and keeps the reason in TrainResult.stopped (and diverged=True). The training loop
wraps every run's callbacks in it unless cfg.health_guard is off, so a local run, each
Ray Train rank (the losses are already averaged across ranks, so all ranks stop at the
same step) and a sweep trial obey the same rules and thresholds.
"""

from __future__ import annotations

import math

import numpy as np

from gan.callbacks import Callbacks, Diverged, ForwardingCallbacks
from gan.config import RunConfig

HEALTH_PREFIX = "health: "


class HealthGuard(ForwardingCallbacks):
    """Forward everything to `inner`; stop the run on non-finite, collapsed or exploded losses.

    Rows are forwarded before they are judged, so the run's metrics show the failure.
    """

    def __init__(self, inner: Callbacks | None = None, d_floor: float = 1e-3,
                 g_ceiling: float = 50.0, window: int = 200, g_limit: float = 1e4) -> None:
        super().__init__(inner)
        self.d_floor, self.g_ceiling, self.window = d_floor, g_ceiling, window
        self.g_limit = g_limit  # beyond any working GAN's G loss: no need to wait a window
        self.d_low = 0  # consecutive steps with d_loss < d_floor
        self.g_high = 0  # consecutive steps with g_loss > g_ceiling
        self.last_finite: tuple[int, dict[str, float]] | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, inner: Callbacks | None = None) -> HealthGuard:
        """The guard with the run's thresholds (RunConfig health_* fields)."""
        return cls(inner, d_floor=cfg.health_d_floor, g_ceiling=cfg.health_g_ceiling,
                   window=cfg.health_window, g_limit=cfg.health_g_limit)

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        self.inner.on_metrics(rows)
        for step, row in rows:
            reason = self.check(step, row)
            if reason:
                raise Diverged(HEALTH_PREFIX + reason + self._last_finite())
            self.last_finite = (step, row)

    def _last_finite(self) -> str:
        """Where the run last looked sane, so the user sees what it diverged from."""
        if self.last_finite is None:
            return "; no finite losses before it"
        step, row = self.last_finite
        return f"; last finite losses at step {step}: d_loss={row['d_loss']:.4g}, g_loss={row['g_loss']:.4g}"

    def check(self, step: int, row: dict[str, float]) -> str | None:
        """The reason to stop after this step's losses, or None."""
        d, g = row.get("d_loss", 0.0), row.get("g_loss", 0.0)
        if not (math.isfinite(d) and math.isfinite(g)):
            return f"non-finite losses at step {step} (d_loss={d}, g_loss={g})"
        if g > self.g_limit:
            return f"G loss exploded to {g:.3g} at step {step}"
        self.d_low = self.d_low + 1 if d < self.d_floor else 0
        self.g_high = self.g_high + 1 if g > self.g_ceiling else 0
        if self.d_low >= self.window:
            return f"D loss collapsed below {self.d_floor:g} for {self.window} steps (step {step})"
        if self.g_high >= self.window:
            return f"G loss above {self.g_ceiling:g} for {self.window} steps (step {step})"
        return None

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.inner.on_eval(epoch, step, grid, metrics)
        fid = metrics.get("fid")
        if fid is not None and not math.isfinite(fid):
            raise Diverged(f"{HEALTH_PREFIX}non-finite FID at epoch {epoch}")
