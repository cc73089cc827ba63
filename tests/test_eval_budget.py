"""Periodic evals within a share of training time: which epochs score, that skipping an
eval never changes training, and that a sweep's trials score at ASHA's own rungs."""

from __future__ import annotations

import math

import torch

from gan.callbacks import Callbacks
from gan.config import make_config
from gan.eval_budget import EvalBudget
from gan.train import train

TINY = {"arch": "mlp", "mlp_width": 8, "latent_dim": 16, "batch_size": 64, "device": "cpu", "epochs": 5}


class Scores:
    """An evaluator that reports its calls; `cost` is the estimate it gives of one eval."""

    def __init__(self, cost: float | None) -> None:
        self.cost, self.calls, self.estimates = cost, 0, 0

    def __call__(self, generator, latent_dim):
        self.calls += 1
        return {"fid": 10.0 - self.calls}

    def estimate_seconds(self, generator, latent_dim):
        self.estimates += 1
        return self.cost


class Evals(Callbacks):
    def __init__(self, wanted: tuple[int, ...] = ()) -> None:
        self.epochs: list[int] = []
        self.wanted = set(wanted)

    def on_eval(self, epoch, step, grid, metrics):
        self.epochs.append(epoch)

    def wants_eval(self, epoch):
        return epoch in self.wanted


def test_the_budget_admits_an_eval_only_while_all_evals_fit_in_the_share():
    b = EvalBudget(0.05)
    b.trained(10.0)
    assert b.allows(lambda: 0.4)  # 0.4 <= 0.05 * 10
    b.scored(0.4)
    b.trained(2.0)
    assert not b.allows(lambda: 99.0)  # the estimate is only for the first: the last cost (0.4) counts now
    b.trained(6.0)
    assert b.allows(None)  # 0.4 (+ the estimate's own few microseconds) + 0.4 <= 0.05 * 18
    assert EvalBudget(0.0).allows(lambda: math.inf)  # 0: no budget
    resumed = EvalBudget(0.05, b.state_dict())
    assert (resumed.train_s, resumed.last) == (18.0, 0.4) and resumed.eval_s == b.eval_s


def test_over_budget_only_the_last_epoch_and_the_wanted_ones_score_and_training_is_unchanged(mnist_small):
    dear, every = Scores(cost=1e9), Scores(cost=None)
    skipped, wanted = Evals(), Evals(wanted=(2,))
    a = train(make_config(TINY), mnist_small, skipped, evaluator=dear)
    b = train(make_config({**TINY, "eval_budget": 0}), mnist_small, Evals(), evaluator=every)
    # A budget no real eval fits in (its measured cost replaces the estimate after one).
    c = train(make_config({**TINY, "eval_budget": 1e-12}), mnist_small, wanted, evaluator=Scores(cost=1e9))
    assert skipped.epochs == [5] and dear.calls == 1 and dear.estimates == 1
    assert every.calls == 5 and every.estimates == 0
    assert wanted.epochs == [2, 5]
    # Scoring draws nothing from the training streams: the weights are the same either way.
    for x, y in ((a, b), (a, c)):
        for p, q in zip(x.generator.state_dict().values(), y.generator.state_dict().values(), strict=True):
            assert torch.equal(p, q)


def test_the_real_evaluator_estimates_a_positive_cost(mnist_small):
    from gan.metrics import Evaluator
    from gan.models import build_models

    cfg = make_config(TINY)
    G, _ = build_models(cfg, mnist_small.shape)  # noqa: N806
    ev = Evaluator(mnist_small, backbone="classifier", num_samples=100, device=torch.device("cpu"))
    seconds = ev.estimate_seconds(G, cfg.latent_dim)
    assert 0 < seconds < math.inf


def test_trials_score_at_the_rungs_ray_asha_compares_them_at():
    from ray.tune.schedulers import ASHAScheduler

    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.space_file import load_space
    from pipelines.sweep.tuning import make_scheduler, rung_epochs

    for name, grace in (("quick", None), ("default", 2)):
        space = load_space(name)
        opts = SweepOptions(space=name, grace_period=grace).resolved(space)
        scheduler = make_scheduler(space, opts)
        assert isinstance(scheduler, ASHAScheduler)
        milestones = sorted(r[0] for r in scheduler._brackets[0]._rungs)  # Ray's own rung list
        assert rung_epochs(space, opts) == tuple(milestones) and milestones
    assert rung_epochs(space, SweepOptions(space="quick", scheduler="none").resolved(load_space("quick"))) == ()
