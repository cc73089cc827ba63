"""The one training loop: reproducible, resumable to the bit, and reporting what it promises."""

from __future__ import annotations

import math

import pytest
import torch

from gan.callbacks import SHIFT_KEY, Callbacks, ShiftedSteps, StopTraining
from gan.checkpoint import load_checkpoint, save_checkpoint
from gan.config import ConfigError, make_config
from gan.step_metrics import STEP_METRICS
from gan.train import train

TINY = {"dcgan_width": 8, "mlp_width": 8, "latent_dim": 16, "batch_size": 64, "device": "cpu",
        "eval_budget": 0}  # every eval_every epoch scored: the tests count evals


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
    # D_x and D_G_z are the mean D outputs on the batches d_loss was computed on: with BCE,
    # d_loss >= -log(D_x) - log(1 - D_G_z) (Jensen), tight while D's logits barely vary.
    for _, r in rec.rows:
        assert 0 <= r["d_loss"] - (-math.log(r["D_x"]) - math.log(1 - r["D_G_z"])) < 0.01
    assert rec.rows[-1][1]["D_x"] > rec.rows[0][1]["D_x"] and rec.rows[-1][1]["D_x"] > rec.rows[-1][1]["D_G_z"]
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


def test_a_shifted_run_logs_every_step_after_its_own_and_its_checkpoints_keep_the_shift(mnist_small):
    # A population member that copied another's state (its step count) goes on after the
    # last step its own run logged: 100 here; its checkpoints say so for a restart.
    cfg = make_config({**TINY, "epochs": 2, "arch": "mlp"})
    plain, shifted = Recorder(), Recorder()
    train(cfg, mnist_small, plain)
    train(cfg, mnist_small, ShiftedSteps(shifted, 100))
    assert [s for s, _ in shifted.rows] == [s + 100 for s, _ in plain.rows]
    assert [r for _, r in shifted.rows] == [r for _, r in plain.rows]  # the training itself is the same
    assert [(e, s) for e, s, _, _ in shifted.evals] == [(1, 108), (2, 116)]
    epoch, step, state = shifted.checkpoints[-1]
    assert (epoch, step, state["step"], state[SHIFT_KEY]) == (2, 116, 16, 100)
    assert SHIFT_KEY not in plain.checkpoints[-1][2]  # an unshifted run's state is as it was


def test_checkpoint_holds_the_full_state(mnist_small):
    rec = Recorder()
    train(make_config({**TINY, "epochs": 1, "ema": 0.5}), mnist_small, rec)
    state = rec.checkpoints[-1][2]
    assert {"G", "D", "G_ema", "opt_g", "opt_d", "scalers", "rng", "epoch", "step", "config"} <= set(state)
    assert state["epoch"] == 1 and state["step"] == 8 and state["G_ema"]


def test_ema_generator_is_what_gets_sampled_and_shipped(mnist_small):
    grids = []

    class Grids(Recorder):
        def on_eval(self, epoch, step, grid, metrics):
            super().on_eval(epoch, step, grid, metrics)
            grids.append(grid)

    from gan.sampling import fixed_latents, generate, image_grid

    cfg = make_config({**TINY, "epochs": 1, "ema": 0.99})
    rec = Grids()
    result = train(cfg, mnist_small, rec)
    state = rec.checkpoints[-1][2]
    shipped = result.generator.state_dict()
    assert all(torch.equal(v, shipped[k]) for k, v in state["G_ema"].items())
    assert any(not torch.equal(v, shipped[k]) for k, v in state["G"].items())  # not the raw G
    assert (grids[-1] == image_grid(generate(result.generator, fixed_latents(cfg.latent_dim, cfg.seed)))).all()


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
