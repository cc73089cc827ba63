"""The EMA generator's warm-up: it starts as G (never as the init) and ends at the configured decay."""

from __future__ import annotations

import copy

import pytest
import torch

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.ema import EMA_RAMPUP, ema_beta, ema_half_life, ema_update
from gan.models import build_models
from gan.train import train

TINY = {"dcgan_width": 8, "latent_dim": 16, "batch_size": 64, "device": "cpu", "eval_budget": 0}


def test_the_first_update_makes_the_ema_equal_to_g():
    assert ema_beta(0.999, 0) == 0.0


def test_early_the_half_life_is_a_fixed_fraction_of_the_steps_seen():
    # the EMA's half-life after s steps is EMA_RAMPUP * s steps while that is shorter than the decay's
    for s in (1, 10, 100, 1000):
        assert ema_beta(0.999, s) ** (EMA_RAMPUP * s) == pytest.approx(0.5)


def test_late_the_configured_decay_applies_and_the_weight_never_exceeds_it():
    ramp_end = ema_half_life(0.999) / EMA_RAMPUP  # ~69,300 steps
    assert ema_beta(0.999, int(ramp_end) + 1) == 0.999 and ema_beta(0.999, 10**7) == 0.999
    betas = [ema_beta(0.999, s) for s in range(0, 100_000, 37)]
    assert betas == sorted(betas) and max(betas) == 0.999


def test_update_interpolates_parameters_and_batchnorm_statistics_and_copies_counts():
    cfg = make_config({"arch": "dcgan", **TINY})
    torch.manual_seed(0)
    ema, _ = build_models(cfg, (1, 28, 28))
    torch.manual_seed(1)
    g, _ = build_models(cfg, (1, 28, 28))
    g.train()(torch.randn(8, 16))  # moves g's BatchNorm running statistics
    before = copy.deepcopy(ema)
    ema_update(ema, g, 0.75)
    for p_new, p_old, p_g in zip(ema.parameters(), before.parameters(), g.parameters(), strict=True):
        assert torch.allclose(p_new, 0.75 * p_old + 0.25 * p_g)
    for (name, b_new), b_old, b_g in zip(ema.named_buffers(), before.buffers(), g.buffers(), strict=True):
        if name.endswith("num_batches_tracked"):
            assert torch.equal(b_new, b_g)
        else:
            assert torch.allclose(b_new, 0.75 * b_old + 0.25 * b_g)


class Checkpoints(Callbacks):
    def __init__(self):
        self.states = []

    def on_checkpoint(self, epoch, step, state):
        self.states.append(state)


def _distance(a: dict, b: dict) -> float:
    return sum((a[k].float() - b[k].float()).abs().sum().item() for k in a if a[k].is_floating_point())


def test_after_a_short_run_the_ema_tracks_g_not_the_init(mnist_small):
    # 8 steps at decay 0.999: a fixed decay would leave the EMA 99% init; warmed up it is near G.
    cfg = make_config({**TINY, "epochs": 1, "ema": 0.999})
    torch.manual_seed(cfg.seed)
    init = build_models(cfg, mnist_small.shape)[0].state_dict()
    rec = Checkpoints()
    result = train(cfg, mnist_small, rec)
    g, g_ema = rec.states[-1]["G"], rec.states[-1]["G_ema"]
    assert _distance(g_ema, g) < 0.2 * _distance(g, init)
    assert _distance(g_ema, g) > 0  # ...and still an average, not a copy
    assert all(torch.equal(v, result.generator.state_dict()[k]) for k, v in g_ema.items())  # EMA is what ships


def test_the_ema_copy_does_not_change_how_g_trains(mnist_small):
    # what makes "EMA vs no EMA at the same step" a comparison of two views of one run
    runs = []
    for ema in (0.999, 0.0):
        rec = Checkpoints()
        rows: list = []
        rec.on_metrics = rows.extend
        train(make_config({**TINY, "epochs": 1, "ema": ema}), mnist_small, rec)
        runs.append((rows, rec.states[-1]["G"]))
    (rows_a, g_a), (rows_b, g_b) = runs
    assert rows_a == rows_b and all(torch.equal(g_a[k], g_b[k]) for k in g_a)
