"""The one training loop: reproducible, resumable to the bit, and reporting what it promises."""

from __future__ import annotations

import pytest
import torch

from gan.checkpoint import load_checkpoint, save_checkpoint
from gan.config import ConfigError, make_config
from gan.train import STEP_METRICS, Callbacks, StopTraining, train

TINY = {"dcgan_width": 8, "mlp_width": 8, "latent_dim": 16, "batch_size": 64, "device": "cpu"}


class Recorder(Callbacks):
    def __init__(self):
        self.rows, self.evals, self.checkpoints = [], [], []

    def on_metrics(self, rows):
        self.rows += rows

    def on_eval(self, epoch, step, grid, metrics):
        self.evals.append((epoch, step, grid.shape, metrics))

    def on_checkpoint(self, epoch, step, state):
        self.checkpoints.append((epoch, step, state))


def test_same_config_and_seed_give_the_same_losses(mnist_small):
    cfg = make_config({**TINY, "epochs": 1})
    a, b = Recorder(), Recorder()
    train(cfg, mnist_small, a)
    train(cfg, mnist_small, b)
    assert a.rows == b.rows and len(a.rows) == 8
    c = Recorder()
    train(make_config({**TINY, "epochs": 1, "seed": 1}), mnist_small, c)
    assert c.rows != a.rows


def test_reports_every_step_once_with_all_metrics_and_a_grid_per_eval(mnist_small):
    rec = Recorder()
    cfg = make_config({**TINY, "epochs": 2, "log_every": 3, "arch": "mlp"})
    result = train(cfg, mnist_small, rec)
    assert [s for s, _ in rec.rows] == list(range(1, 17))
    assert all(set(r) == set(STEP_METRICS) for _, r in rec.rows)
    assert all(0 <= r["D_x"] <= 1 and 0 <= r["D_G_z"] <= 1 for _, r in rec.rows)
    assert [(e, s) for e, s, _, _ in rec.evals] == [(1, 8), (2, 16)]
    assert rec.evals[0][2] == (8 * 30 + 2, 8 * 30 + 2)  # 8x8 grid of 28px + 2px padding, gray
    assert result.step == 16 and result.epochs_done == 2


def test_resume_from_a_checkpoint_continues_exactly(mnist_small, tmp_path):
    cfg = make_config({**TINY, "epochs": 2, "ema": 0.9, "n_dis": 2, "loss": "hinge"})
    full = Recorder()
    whole = train(cfg, mnist_small, full)
    first = Recorder()
    train(make_config({**TINY, "epochs": 1, "ema": 0.9, "n_dis": 2, "loss": "hinge"}), mnist_small, first)
    path = save_checkpoint(first.checkpoints[-1][2], tmp_path / "c.pt")
    state = load_checkpoint(path)  # weights_only=True inside
    second = Recorder()
    resumed = train(cfg, mnist_small, second, resume=state)
    assert second.rows == full.rows[len(first.rows):]
    assert second.rows[0][0] == first.rows[-1][0] + 1
    for p, q in zip(whole.generator.parameters(), resumed.generator.parameters(), strict=True):
        assert torch.equal(p, q)


def test_checkpoint_holds_the_full_state(mnist_small):
    rec = Recorder()
    train(make_config({**TINY, "epochs": 1, "ema": 0.5}), mnist_small, rec)
    state = rec.checkpoints[-1][2]
    assert {"G", "D", "G_ema", "opt_g", "opt_d", "scalers", "rng", "epoch", "step", "config"} <= set(state)
    assert state["epoch"] == 1 and state["step"] == 8 and state["G_ema"]


def test_ema_generator_is_what_gets_sampled(mnist_small):
    from gan.models import build_models

    cfg = make_config({**TINY, "epochs": 1, "ema": 0.99})
    torch.manual_seed(cfg.seed)
    init, _ = build_models(cfg, mnist_small.shape)
    ema = train(cfg, mnist_small, Recorder()).generator
    raw = train(make_config({**TINY, "epochs": 1}), mnist_small, Recorder()).generator

    def distance(a, b):
        return sum((p - q).abs().sum().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))

    # After 8 steps at decay 0.99 the EMA copy has moved only ~8% of the way the raw G moved.
    assert 0 < distance(ema, init) < 0.2 * distance(raw, init)


def test_a_callback_can_stop_training_with_a_reason(mnist_small):
    class Stopper(Recorder):
        def on_metrics(self, rows):
            super().on_metrics(rows)
            if rows and rows[-1][0] >= 4:
                raise StopTraining("enough")

    rec = Stopper()
    result = train(make_config({**TINY, "epochs": 3, "log_every": 2}), mnist_small, rec)
    assert result.stopped == "enough" and result.step == 4


def test_batch_larger_than_the_dataset_is_a_config_error(mnist_small):
    with pytest.raises(ConfigError, match="batch_size=1024 is invalid"):
        train(make_config({**TINY, "batch_size": 1024}), mnist_small)


def test_evaluator_results_are_reported_with_best_so_far(mnist_small):
    calls = iter([5.0, 7.0])
    rec = Recorder()
    train(make_config({**TINY, "epochs": 2}), mnist_small, rec, evaluator=lambda g, d: {"fid": next(calls)})
    assert [m for *_, m in rec.evals] == [{"fid": 5.0, "best_fid": 5.0}, {"fid": 7.0, "best_fid": 5.0}]
