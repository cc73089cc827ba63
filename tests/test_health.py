"""The health guard stops a failed GAN with a reason, and only a failed one."""

from __future__ import annotations

import math

import pytest
import torch

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


def test_the_guard_is_on_in_every_run_and_a_diverged_run_says_where_it_was_last_sane(mnist_small):
    # No guard passed in: the loop wraps every run's callbacks itself (local, Ray rank, trial).
    cfg = make_config({"arch": "mlp", "mlp_width": 16, "epochs": 2, "batch_size": 64, "log_every": 2,
                       "lr_g": 1e300, "lr_d": 1e300})
    result = train(cfg, mnist_small)
    # stopped at the first flush of losses (log_every=2) that held a NaN: step 1's G loss
    assert result.diverged and result.epochs_done == 0 and result.step == 2
    assert result.stopped.startswith("health: non-finite losses at step 1")
    assert result.stopped.endswith("no finite losses before it")


def test_no_health_guard_lets_a_run_fail_in_plain_sight(mnist_small):
    cfg = make_config({"arch": "mlp", "mlp_width": 16, "epochs": 1, "batch_size": 64,
                       "lr_g": 1e300, "lr_d": 1e300, "health_guard": False})
    result = train(cfg, mnist_small)
    assert not result.diverged and result.stopped is None and result.epochs_done == 1


class _NanGenerator(torch.nn.Module):
    def forward(self, z):
        return torch.full((len(z), 1, 28, 28), math.nan)


def test_scoring_refuses_non_finite_images_and_the_run_logs_no_score_for_them(mnist5k, tmp_path):
    from gan.metrics import Evaluator
    from gan.sampling import NonFiniteImages

    evaluator = Evaluator(mnist5k, num_samples=50)  # the session's cached classifier
    with pytest.raises(NonFiniteImages):
        evaluator(_NanGenerator(), 8)

    class Scores(Callbacks):
        evals: list = []

        def on_eval(self, epoch, step, grid, metrics):
            self.evals.append(metrics)

    # A loop whose generator emits NaN: with the guard the run diverges at that eval and
    # nothing is scored; without it the eval logs no metric at all.
    def nan_eval(generator, latent_dim):
        return evaluator(_NanGenerator(), latent_dim)

    base = {"arch": "mlp", "mlp_width": 16, "epochs": 1, "batch_size": 256}
    guarded = train(make_config(base), mnist5k, Scores(), evaluator=nan_eval)
    assert guarded.diverged and "images are not finite" in guarded.stopped and Scores.evals == []
    watched = train(make_config({**base, "health_guard": False}), mnist5k, Scores(), evaluator=nan_eval)
    assert not watched.diverged and Scores.evals == [{}]
