"""The health guard stops a failed GAN with a reason, and only a failed one."""

from __future__ import annotations

import math

import pytest

from gan.callbacks import Callbacks, StopTraining
from gan.config import make_config
from gan.health import HealthGuard
from gan.train import train


def _row(d: float, g: float) -> dict[str, float]:
    return {"d_loss": d, "g_loss": g, "D_x": 0.5, "D_G_z": 0.5}


class _Recorder(Callbacks):
    def __init__(self) -> None:
        self.rows: list = []

    def on_metrics(self, rows) -> None:
        self.rows.extend(rows)


def test_nan_loss_stops_at_once_and_the_row_is_still_forwarded():
    inner = _Recorder()
    guard = HealthGuard(inner)
    with pytest.raises(StopTraining, match=r"health: non-finite losses at step 2"):
        guard.on_metrics([(1, _row(0.7, 0.7)), (2, _row(math.nan, 0.7))])
    assert [s for s, _ in inner.rows] == [1, 2]


def test_collapsed_d_loss_must_be_sustained_to_stop():
    guard = HealthGuard(window=5)
    guard.on_metrics([(i, _row(1e-5, 8.0)) for i in range(4)] + [(4, _row(0.3, 1.0))])
    with pytest.raises(StopTraining, match="D loss collapsed below 0.001 for 5 steps"):
        guard.on_metrics([(i, _row(1e-5, 8.0)) for i in range(5, 10)])


def test_exploding_g_loss_stops():
    guard = HealthGuard(g_ceiling=50, window=3)
    with pytest.raises(StopTraining, match="G loss above 50 for 3 steps"):
        guard.on_metrics([(i, _row(0.5, 1e3)) for i in range(3)])


def test_a_huge_g_loss_stops_at_once():
    with pytest.raises(StopTraining, match="G loss exploded to 1e\\+06 at step 7"):
        HealthGuard().on_metrics([(7, _row(0.0, 1e6))])


def test_healthy_losses_pass():
    HealthGuard(window=2).on_metrics([(i, _row(0.6, 0.9)) for i in range(100)])


def test_the_loop_ends_cleanly_with_the_reason(mnist_small):
    class ForceNan(Callbacks):
        def on_metrics(self, rows) -> None:
            rows[-1][1]["d_loss"] = math.nan  # as if D had diverged

    cfg = make_config({"arch": "mlp", "mlp_width": 16, "epochs": 3, "batch_size": 64, "log_every": 4})
    result = train(cfg, mnist_small, HealthGuard(ForceNan()))
    assert result.stopped and result.stopped.startswith("health: non-finite losses at step 4")
    assert result.epochs_done == 0
