"""Periodic evaluation within a share of the training time.

Scoring every epoch cost 9-14% of a DCGAN epoch on mnist-5k and several times an epoch
with Inception features on a CPU. StyleGAN keeps its periodic FID near 5% of training
by spacing it; here an eval that `eval_every` makes due runs only while the evals so far
plus this one stay within `eval_budget` of the training time so far. Not budgeted: the
last epoch (the run's final score), and epochs a callback asks for (a sweep's ASHA
rungs, where a missing score would cost the scheduler its signal). A config's `eval_at`
replaces eval_every and the budget with a fixed list (a confirmation run scores at the
epochs its trial scored at: a best over more evals is lower, whatever the generator).

The first eval's cost is estimated by scoring a few images (the evaluator's
`estimate_seconds`), later ones by the last eval's measured cost. Skipping an eval
never changes training: scoring draws no random numbers from the training streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gan.callbacks import Callbacks
from gan.config import RunConfig, eval_epochs
from gan.metrics.distributed import any_rank


class EvalBudget:
    def __init__(self, fraction: float, state: dict[str, Any] | None = None) -> None:
        self.fraction = fraction
        state = state or {}
        self.train_s = float(state.get("train_s", 0.0))  # seconds spent training (this run, all lives)
        self.eval_s = float(state.get("eval_s", 0.0))  # seconds spent scoring
        self.last: float | None = state.get("last")  # the cost of the last eval, or None before one

    def allows(self, estimate: Callable[[], float] | None) -> bool:
        """Whether one more eval now keeps all evals within the budget."""
        if self.fraction <= 0:
            return True
        if self.last is None:
            started = time.perf_counter()
            self.last = float(estimate()) if estimate is not None else 0.0
            self.eval_s += time.perf_counter() - started
        return self.eval_s + self.last <= self.fraction * self.train_s

    def score_now(self, cfg: RunConfig, done: int, cb: Callbacks, evaluator: Any, sampler: nn.Module,
                  world: int, device: torch.device) -> bool:
        """Score after `done` epochs? The last epoch always; an epoch a callback wants
        whatever eval_every (a sweep's rungs need not fall on its grid); an eval_every
        epoch when the budget allows. Every rank agrees: one all-reduce per epoch, since
        timings and callbacks differ by rank and the scoring is collective."""
        if done == cfg.epochs:
            return True
        fixed = eval_epochs(cfg)
        if fixed is not None:  # the config names its eval epochs: no budget
            wanted = done in fixed or cb.wants_eval(done)
        else:
            due = done % cfg.eval_every == 0
            wanted = cb.wants_eval(done) or (due and self.allows(estimator(evaluator, sampler, cfg.latent_dim)))
        return any_rank(wanted, world, device)

    def trained(self, seconds: float) -> None:
        self.train_s += seconds

    def scored(self, seconds: float) -> None:
        self.eval_s += seconds
        self.last = seconds

    def state_dict(self) -> dict[str, Any]:
        return {"train_s": self.train_s, "eval_s": self.eval_s, "last": self.last}


def estimator(evaluator: Any, generator: Any, latent_dim: int) -> Callable[[], float] | None:
    """The evaluator's cost estimate for this generator, when it offers one."""
    estimate = getattr(evaluator, "estimate_seconds", None)
    return None if estimate is None else (lambda: estimate(generator, latent_dim))
