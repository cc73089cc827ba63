"""Metrics by name: each maps (real, fake) FeatureSets to named floats.

A new metric is one function here (its math in its own module) plus one line in METRICS.
"""

from __future__ import annotations

from collections.abc import Callable

from gan.metrics.engine import FeatureSet
from gan.metrics.frechet import frechet_distance
from gan.metrics.inception_score import inception_score
from gan.metrics.kid import kernel_inception_distance
from gan.metrics.prdc import prdc

MetricFn = Callable[[FeatureSet, FeatureSet], dict[str, float]]


def fid(real: FeatureSet, fake: FeatureSet) -> dict[str, float]:
    """Frechet distance of the feature Gaussians."""
    return {"fid": frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)}


def kid(real: FeatureSet, fake: FeatureSet) -> dict[str, float]:
    """Unbiased KID, mean and std over subsets."""
    mean, std = kernel_inception_distance(real.feats, fake.feats)
    return {"kid": mean, "kid_std": std}


def precision_recall(real: FeatureSet, fake: FeatureSet) -> dict[str, float]:
    """Precision, recall, density, coverage with k=5."""
    return prdc(real.feats, fake.feats, k=5)


def inception_score_metric(real: FeatureSet, fake: FeatureSet) -> dict[str, float]:
    """IS of the fakes; nothing when the backbone has no softmax head."""
    return {} if fake.probs is None else {"inception_score": inception_score(fake.probs)[0]}


METRICS: dict[str, MetricFn] = {
    "fid": fid,
    "kid": kid,
    "prdc": precision_recall,
    "inception_score": inception_score_metric,
}


def compute_metrics(real: FeatureSet, fake: FeatureSet) -> dict[str, float]:
    """Every registered metric of fake against real, merged into one dict."""
    out: dict[str, float] = {}
    for fn in METRICS.values():
        out.update(fn(real, fake))
    return out
