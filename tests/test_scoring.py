"""Scoring never changes what it scores, and what is scored is what ships.

A BatchNorm generator in train mode is the hard case: run as is, it would normalise with
batch statistics and overwrite its running statistics on every eval.
"""

from __future__ import annotations

import copy

import pytest
import torch

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.metrics import Evaluator
from gan.models import build_models
from gan.sampling import eval_view, fixed_latents, generate
from gan.train import train

TINY = {"arch": "dcgan", "dcgan_width": 8, "latent_dim": 16, "batch_size": 64, "device": "cpu",
        "g_norm": "batch", "ema": 0.0, "eval_samples": 100, "eval_budget": 0}


@pytest.fixture(scope="module")
def evaluator(mnist5k) -> Evaluator:
    # real statistics of mnist-5k (the classifier is cached under $GAN_PIPELINES_CACHE)
    return Evaluator(mnist5k, "classifier", num_samples=100)


@pytest.fixture
def bn_generator() -> torch.nn.Module:
    """A BatchNorm DCGAN generator in train mode whose running statistics have moved."""
    torch.manual_seed(0)
    g, _ = build_models(make_config(TINY), (1, 28, 28))
    g.train()(torch.randn(32, 16))
    return g


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scoring_leaves_the_generator_bit_identical_and_in_its_mode(evaluator, bn_generator):
    assert any("running_mean" in k for k in bn_generator.state_dict())  # the case that matters
    bn_generator.net[0].eval()  # a caller's mix of modes comes back as it was
    modes = [m.training for m in bn_generator.modules()]
    state = copy.deepcopy(bn_generator.state_dict())  # num_batches_tracked included
    first = evaluator(bn_generator, latent_dim=16)
    assert _same_state(bn_generator.state_dict(), state)
    assert [m.training for m in bn_generator.modules()] == modes
    assert evaluator(bn_generator, latent_dim=16) == first  # twice: the same numbers


def test_a_train_mode_generator_scores_as_its_saved_eval_mode_copy(evaluator, bn_generator):
    shipped = copy.deepcopy(bn_generator).eval()
    assert evaluator(bn_generator, latent_dim=16) == evaluator(shipped, latent_dim=16)


def test_sample_grids_leave_the_generator_unchanged(bn_generator):
    state = copy.deepcopy(bn_generator.state_dict())
    z = fixed_latents(16, seed=0)
    grid = generate(bn_generator, z)
    assert bn_generator.training and _same_state(bn_generator.state_dict(), state)
    with eval_view(copy.deepcopy(bn_generator)) as shipped:
        assert torch.equal(grid, generate(shipped, z))


def test_eval_view_is_no_grad_and_restores_the_mode_after_an_error(bn_generator):
    with pytest.raises(RuntimeError, match="boom"), eval_view(bn_generator) as g:
        assert not g.training and not torch.is_grad_enabled()
        raise RuntimeError("boom")
    assert all(m.training for m in bn_generator.modules()) and torch.is_grad_enabled()


class Record(Callbacks):
    def __init__(self):
        self.rows, self.evals = [], []

    def on_metrics(self, rows):
        self.rows += rows

    def on_eval(self, epoch, step, grid, metrics):
        self.evals.append(metrics)


def test_the_run_ships_the_generator_that_earned_its_last_score(evaluator, mnist_small):
    # scored == shipped: --ema 0 and a BatchNorm G, scored in the loop while in train mode
    cfg = make_config({**TINY, "epochs": 2})
    rec = Record()
    result = train(cfg, mnist_small, rec, evaluator=evaluator)
    assert not result.generator.training
    assert evaluator(result.generator, cfg.latent_dim)["fid"] == rec.evals[-1]["fid"]


def test_evaluating_during_training_changes_nothing_in_the_run(evaluator, mnist_small):
    cfg = make_config({**TINY, "epochs": 2})
    scored, unscored = Record(), Record()
    a = train(cfg, mnist_small, scored, evaluator=evaluator)
    b = train(cfg, mnist_small, unscored)
    assert scored.rows == unscored.rows
    assert _same_state(a.generator.state_dict(), b.generator.state_dict())
