"""When a confirmed challenger replaces the champion: a one-sided two-sample t-test.

A config's score over its confirmation seeds (`confirm`) is a mean of n draws of a noisy
number; two configs that are equally good differ in their means by chance. The champion
moves only when the challenger's mean is better by more than t(1 - ALPHA, df) standard
errors of the difference of the two means, so an equally good challenger takes it in
ALPHA of promotions (tests/test_confirm.py checks both error rates by simulation).

The noise of one seed's score (sigma) is estimated once for both: the pooled within-config
standard deviation of every config the two sweeps confirmed (its degrees of freedom: the
sum of n - 1 over them). A champion known from one run has no spread of its own, but its
score has the same noise as any config's: it counts as a mean of one with that sigma,
never as exact. When no confirmed config has two seeds, sigma is unknown and the rule
cannot decide: the champion stays and the reason says what would let it decide.

Power, for a challenger 2 sigma better confirmed with 3 seeds (simulated, 10,000 draws):
83% against a champion of 6 seeds, 71% against one of 3 (no test holding 5% can exceed
79% there: 2 sigma is 2.45 standard errors of a difference of two means of 3).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from pipelines.tracking import names

ALPHA = 0.04  # an equally good challenger moves the champion in 4% of promotions (at most 5%)
HIGHER_IS_BETTER = ("precision", "recall", "density", "coverage", "inception_score")


@dataclass(frozen=True)
class Spread:
    """A config's score over its confirmation seeds, and the noise of one seed's score
    estimated over its sweep's confirmed configs (pooled_std with pooled_df degrees of
    freedom; 0: unknown)."""

    mean: float
    std: float  # of its own seeds (nan below 2)
    n: int
    pooled_std: float = math.nan
    pooled_df: int = 0

    @classmethod
    def of(cls, values: list[float], noise: tuple[float, int] = (math.nan, 0)) -> Spread:
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return cls(statistics.fmean(values), std, len(values), *noise)

    @classmethod
    def single(cls, value: float) -> Spread:
        """A score of one run: a mean of one, its noise unknown."""
        return cls(value, math.nan, 1)

    def tags(self) -> dict[str, str]:
        return {names.VERSION_CONFIRM_MEAN: repr(self.mean), names.VERSION_CONFIRM_STD: repr(self.std),
                names.VERSION_CONFIRM_N: str(self.n), names.VERSION_CONFIRM_POOLED_STD: repr(self.pooled_std),
                names.VERSION_CONFIRM_POOLED_DF: str(self.pooled_df)}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Spread | None:
        if names.VERSION_CONFIRM_MEAN not in tags:
            return None
        n = int(tags.get(names.VERSION_CONFIRM_N, 1))
        std = float(tags.get(names.VERSION_CONFIRM_STD, "nan"))
        if n < 2:
            std = math.nan  # a champion of one seed promoted before this rule said 0.0: never exact
        if names.VERSION_CONFIRM_POOLED_DF in tags:
            noise = (float(tags[names.VERSION_CONFIRM_POOLED_STD]), int(tags[names.VERSION_CONFIRM_POOLED_DF]))
        else:  # promoted before the pooled estimate was kept: its own seeds are its estimate
            noise = (std, n - 1) if n > 1 and math.isfinite(std) else (math.nan, 0)
        return cls(float(tags[names.VERSION_CONFIRM_MEAN]), std, n, *noise)


def pooled(spreads: Iterable[Spread]) -> tuple[float, int]:
    """(pooled within-config standard deviation, its degrees of freedom) over the configs
    with two seeds or more; (nan, 0) when there is none."""
    kept = [s for s in spreads if s.n > 1 and math.isfinite(s.std)]
    df = sum(s.n - 1 for s in kept)
    if df == 0:
        return math.nan, 0
    return math.sqrt(sum((s.n - 1) * s.std**2 for s in kept) / df), df


@dataclass(frozen=True)
class Verdict:
    moves: bool | None  # None: the noise is unknown, the rule cannot decide
    gain: float  # how much better the challenger's mean is (negative: worse)
    margin: float  # what it had to beat: t(1 - ALPHA, df) standard errors of the difference
    df: int


@functools.lru_cache(maxsize=256)
def critical_t(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(1 - ALPHA, df))


def decide(metric: str, challenger: Spread, held: Spread) -> Verdict:
    """Does the challenger's mean beat the champion's beyond chance (see the module doc)?"""
    gain = challenger.mean - held.mean if metric in HIGHER_IS_BETTER else held.mean - challenger.mean
    df = challenger.pooled_df + held.pooled_df
    if df == 0:
        return Verdict(None, gain, math.nan, 0)
    variance = sum(s.pooled_df * s.pooled_std**2 for s in (challenger, held) if s.pooled_df) / df
    margin = critical_t(df) * math.sqrt(variance * (1 / challenger.n + 1 / held.n))
    return Verdict(gain > margin, gain, margin, df)
