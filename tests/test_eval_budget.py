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
        self.grids: list[int] = []  # epochs drawn without scores
        self.wanted = set(wanted)

    def on_eval(self, epoch, step, grid, metrics):
        self.epochs.append(epoch)

    def on_grid(self, epoch, step, grid):
        assert grid.shape == (8 * 30 + 2, 8 * 30 + 2)  # the same fixed-latent grid on_eval gets
        self.grids.append(epoch)

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


def test_over_budget_the_last_and_wanted_epochs_score_the_rest_draw_a_grid_and_training_is_unchanged(mnist_small):
    dear, every = Scores(cost=1e9), Scores(cost=None)
    skipped, wanted = Evals(), Evals(wanted=(2,))
    a = train(make_config(TINY), mnist_small, skipped, evaluator=dear)
    b = train(make_config({**TINY, "eval_budget": 0}), mnist_small, Evals(), evaluator=every)
    # A budget no real eval fits in (its measured cost replaces the estimate after one).
    c = train(make_config({**TINY, "eval_budget": 1e-12}), mnist_small, wanted, evaluator=Scores(cost=1e9))
    # Every eval_every epoch has its grid, scored or not (drawing takes no random numbers).
    d = train(make_config({**TINY, "eval_every": 5}), mnist_small, Evals(), evaluator=Scores(cost=None))
    assert skipped.epochs == [5] and skipped.grids == [1, 2, 3, 4] and dear.calls == 1 and dear.estimates == 1
    assert every.calls == 5 and every.estimates == 0
    assert wanted.epochs == [2, 5] and wanted.grids == [1, 3, 4]
    # Scoring draws nothing from the training streams: the weights are the same either way.
    for x, y in ((a, b), (a, c), (a, d)):
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


def test_a_wanted_epoch_off_the_eval_every_grid_still_scores(mnist_small):
    # eval_every 2, no eval fits the budget: 3 scores only because a callback wants it.
    wanted = Evals(wanted=(3,))
    train(make_config({**TINY, "eval_every": 2, "eval_budget": 1e-12}), mnist_small, wanted,
          evaluator=Scores(cost=1e9))
    assert wanted.epochs == [3, 5]


def test_eval_at_scores_exactly_its_epochs_and_the_last_whatever_the_budget(mnist_small):
    # The budget would score every epoch (0) and eval_every 2 would score 2 and 4: eval_at
    # replaces both; a callback's wanted epoch (an ASHA rung) still scores.
    fixed, wanted = Evals(), Evals(wanted=(4,))
    train(make_config({**TINY, "eval_every": 2, "eval_budget": 0, "eval_at": "1,3"}), mnist_small, fixed,
          evaluator=Scores(cost=None))
    train(make_config({**TINY, "eval_at": "1"}), mnist_small, wanted, evaluator=Scores(cost=1e9))
    assert fixed.epochs == [1, 3, 5] and fixed.grids == [2, 4]
    assert wanted.epochs == [1, 4, 5]


class FakeTrial:
    """What ASHAScheduler reads of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def asha_stop_epochs(scheduler, last_epoch: int) -> list[int]:
    """The epochs where Ray's ASHA stops a trial that is worse than all others, seen only
    through the decisions its public on_trial_result returns.

    A good trial reporting every epoch fills each rung and is never stopped; a bad one
    reporting every epoch is then judged once per rung, exactly at the rung's epoch, and is
    stopped there (Tune would end it at the first; ASHA judges each rung on its own)."""
    from ray.tune.schedulers import TrialScheduler

    decisions = {}
    for name, fid in (("good", 1.0), ("bad", 100.0)):
        trial = FakeTrial(name)
        scheduler.on_trial_add(None, trial)
        decisions[name] = [scheduler.on_trial_result(None, trial, {"epoch": e, "fid": fid})
                           for e in range(1, last_epoch + 1)]
    assert set(decisions["good"]) == {TrialScheduler.CONTINUE}, decisions["good"]
    assert set(decisions["bad"]) <= {TrialScheduler.CONTINUE, TrialScheduler.STOP}, decisions["bad"]
    return [e for e, a in enumerate(decisions["bad"], start=1) if a == TrialScheduler.STOP]


def space_with(tmp_path, eval_every, epochs: int, grace: int):
    from pipelines.sweep.space_file import load_space

    path = tmp_path / f"every-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(f"sweep: {{grace_period: {grace}}}\nparams:\n  epochs: {epochs}\n"
                    f"  eval_every: {eval_every}\n  lr_g: {{type: float, low: 1.0e-4, high: 1.0e-3}}\n")
    return load_space(path)


def test_trials_score_at_the_rungs_ray_asha_stops_them_at(tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.space_file import load_space
    from pipelines.sweep.tuning import make_scheduler, rung_epochs

    spaces = [load_space("quick"), load_space("default"), load_space("cifar10-gpu"),
              space_with(tmp_path, "{type: categorical, choices: [2, 3]}", epochs=25, grace=1),
              space_with(tmp_path, 1, epochs=15, grace=2)]  # a rung at 16 = max_t: never reached
    for space in spaces:
        opts = SweepOptions(space=space.path).resolved(space)
        scheduler = make_scheduler(space, opts)
        assert isinstance(scheduler, ASHAScheduler)
        last_epoch = space.max_value("epochs")
        assert rung_epochs(space, opts) == tuple(asha_stop_epochs(scheduler, last_epoch)), space.path
        assert rung_epochs(space, opts)
    assert rung_epochs(load_space("quick"), SweepOptions(space="quick", scheduler="none").resolved(
        load_space("quick"))) == ()


def test_a_trial_with_any_eval_every_in_the_space_scores_at_every_rung(tmp_path, mnist_small):
    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.tuning import rung_epochs

    space = space_with(tmp_path, "{type: categorical, choices: [2, 3]}", epochs=7, grace=1)
    rungs = rung_epochs(space, SweepOptions(space=space.path).resolved(space))
    assert rungs == (3, 6)  # grace: one eval of the slowest eval_every
    at_rungs = Evals(wanted=rungs)
    train(make_config({**TINY, "epochs": 7, "eval_every": 2, "eval_budget": 1e-12}), mnist_small, at_rungs,
          evaluator=Scores(cost=1e9))
    assert set(rungs) <= set(at_rungs.epochs)
