"""The metric formulas on synthetic features with known answers (milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import gan.metrics.kid as kid_module
from gan.metrics import (
    METRICS,
    FeatureSet,
    compute_metrics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    prdc,
)
from gan.metrics.distributed import rank_share, trim_padding


def random_cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(float(expected))


def test_frechet_distance_of_identical_gaussians_is_zero():
    sigma, mu = random_cov(64, 0), torch.randn(64, dtype=torch.float64)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    s1, s2 = random_cov(32, 1), random_cov(32, 2)
    mu1, mu2 = torch.zeros(32, dtype=torch.float64), torch.ones(32, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = 32 + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_finite_for_singular_covariances():
    # fewer samples than dimensions: rank-deficient covariances, where sqrtm needs eps*I
    a = FeatureSet.of(torch.randn(20, 64))
    b = FeatureSet.of(torch.randn(20, 64) + 0.5)
    value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert np.isfinite(value) and value > 0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(0)
    real, same = torch.randn(600, 16, generator=g), torch.randn(600, 16, generator=g)
    shifted = torch.randn(600, 16, generator=g) + 0.5
    same_mean, same_std = kernel_inception_distance(real, same)
    shifted_mean, _ = kernel_inception_distance(real, shifted)
    assert abs(same_mean) < 3 * same_std
    assert shifted_mean > 20 * same_std


def test_kid_is_unbiased_averaged_over_independent_draws():
    # a biased (V-statistic) estimate would sit near 2 E[k(x, x)] / m above zero
    g = torch.Generator().manual_seed(1)
    means = [
        kernel_inception_distance(torch.randn(100, 8, generator=g), torch.randn(100, 8, generator=g), num_subsets=20)[0]
        for _ in range(30)
    ]
    x = torch.randn(100, 8, generator=g)
    bias_scale = 2 * float(kid_module.polynomial_kernel(x, x).diagonal().mean()) / 50
    assert abs(float(np.mean(means))) < 0.05 * bias_scale
    assert min(means) < 0  # unbiased estimates of a zero distance straddle zero


def test_kid_precomputed_and_per_subset_paths_agree(monkeypatch):
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(300, 8, generator=g), torch.randn(250, 8, generator=g) + 0.2
    precomputed = kernel_inception_distance(real, fake, num_subsets=10)
    monkeypatch.setattr(kid_module, "PRECOMPUTE_MAX_ROWS", 0)
    assert kernel_inception_distance(real, fake, num_subsets=10) == pytest.approx(precomputed)


def test_prdc_of_a_set_against_itself_is_perfect():
    real = torch.randn(300, 8, generator=torch.Generator().manual_seed(3))
    scores = prdc(real, real.clone())
    assert scores["precision"] == 1.0 and scores["recall"] == 1.0 and scores["coverage"] == 1.0
    assert scores["density"] == pytest.approx(1.0, abs=0.05)


def test_prdc_of_a_collapsed_generator_has_high_precision_and_no_recall():
    real = torch.randn(300, 8, generator=torch.Generator().manual_seed(4))
    scores = prdc(real, real[:1].repeat(300, 1))
    assert scores["precision"] == 1.0
    assert scores["recall"] == 0.0
    assert scores["coverage"] < 0.05


def test_prdc_of_a_disjoint_set_is_zero():
    real = torch.randn(300, 8, generator=torch.Generator().manual_seed(5))
    scores = prdc(real, real + 100)
    assert scores == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_inception_score_is_the_class_count_for_confident_balanced_predictions():
    probs = torch.eye(10).repeat(100, 1)  # 1000 confident predictions, 100 per class
    mean, std = inception_score(probs)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_is_one_for_uninformative_predictions():
    assert inception_score(torch.full((50, 10), 0.1))[0] == pytest.approx(1.0)


def test_rank_shares_sum_to_the_total_and_differ_by_at_most_one():
    shares = [rank_share(1001, r, 4) for r in range(4)]
    assert sum(shares) == 1001 and max(shares) - min(shares) <= 1


def test_trim_padding_drops_padding_rows_only():
    padded = [torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[4.0], [5.0], [0.0]])]
    assert trim_padding(padded, [3, 2]).flatten().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_every_registered_metric_reports_and_inception_score_needs_a_softmax_head():
    g = torch.Generator().manual_seed(6)
    feats, probs = torch.randn(40, 8, generator=g), torch.softmax(torch.randn(40, 10, generator=g), 1)
    with_head = compute_metrics(FeatureSet.of(feats), FeatureSet.of(feats + 0.1, probs))
    without_head = compute_metrics(FeatureSet.of(feats), FeatureSet.of(feats + 0.1))
    assert set(METRICS) == {"fid", "kid", "prdc", "inception_score"}
    assert set(with_head) - set(without_head) == {"inception_score"}
