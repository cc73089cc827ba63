"""Metrics on real MNIST digits through the classifier backbone (trained once per session)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gan.config import make_config
from gan.data import ImageData, load_dataset, to_uint8, to_unit_range
from gan.metrics import (
    Evaluator,
    FeatureExtractor,
    FeatureSet,
    MetricError,
    ReplayGenerator,
    compute_metrics,
    evaluate_images,
    extract,
    load_classifier,
    real_features,
)
from gan.metrics.classifier import ClassifierExtractor
from gan.metrics.engine import clear_memory_cache
from gan.models import build_models

KEYS = {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "inception_score", "copy_share",
        "copy_ratio"}


@pytest.fixture(scope="session")
def mnist() -> ImageData:
    return load_dataset("mnist-5k")


@pytest.fixture(scope="session")
def cache_dir(classifier_cache) -> str:
    """The cache the product's evaluators use ($GAN_PIPELINES_CACHE; CI's is empty at the
    start, so the classifier trains once per session: conftest.classifier_cache)."""
    return str(classifier_cache)


@pytest.fixture(scope="session")
def classifier(mnist, cache_dir) -> ClassifierExtractor:
    return load_classifier(mnist, cache_dir=cache_dir)  # the session's one training (or its cache)


@pytest.fixture(scope="session")
def splits(mnist) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of 1000 real digits (the dataset is sorted by class)."""
    perm = torch.randperm(len(mnist), generator=torch.Generator().manual_seed(123))
    return mnist.images[perm[:1000]], mnist.images[perm[1000:2000]]


@pytest.fixture(scope="session")
def split_features(classifier, splits) -> tuple[FeatureSet, FeatureSet]:
    return extract(classifier, splits[0]), extract(classifier, splits[1])


def fid(a: FeatureSet, b: FeatureSet) -> float:
    return compute_metrics(a, b)["fid"]


def noisy(images: torch.Tensor, level: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = to_unit_range(images)
    return to_uint8(x + level * torch.randn(x.shape, generator=g))


def test_classifier_reaches_97_percent_held_out_accuracy(classifier):
    assert classifier.held_out_accuracy >= 0.97


def test_fid_of_two_real_splits_is_far_below_noise_and_blur(classifier, splits, split_features):
    a, b = split_features
    real_vs_real = fid(a, b)
    pure_noise = torch.randint(0, 256, splits[1].shape, dtype=torch.uint8)
    blurred = to_uint8(F.avg_pool2d(to_unit_range(splits[1]), 5, stride=1, padding=2))
    assert 10 * real_vs_real < fid(a, extract(classifier, pure_noise))
    assert 10 * real_vs_real < fid(a, extract(classifier, blurred))


def test_fid_grows_with_the_noise_level(classifier, splits, split_features):
    a = split_features[0]
    scores = [fid(a, extract(classifier, noisy(splits[1], s))) for s in (0.0, 0.1, 0.3, 0.6)]
    assert scores == sorted(scores) and len(set(scores)) == 4


def test_kid_of_two_real_splits_is_near_zero_and_of_noise_far_above(classifier, splits, split_features):
    a, b = split_features
    same = compute_metrics(a, b)
    assert abs(same["kid"]) < 3 * same["kid_std"]
    assert compute_metrics(a, extract(classifier, noisy(splits[1], 0.6)))["kid"] > 10 * same["kid_std"]


def test_real_images_as_generated_get_high_precision_and_recall(split_features):
    scores = compute_metrics(*split_features)
    assert scores["precision"] > 0.7 and scores["recall"] > 0.7 and scores["coverage"] > 0.9


def test_a_collapsed_generator_gets_low_recall(classifier, splits, split_features):
    one_digit = splits[1][:1].repeat(1000, 1, 1, 1)
    scores = compute_metrics(split_features[0], extract(classifier, one_digit))
    assert scores["recall"] < 0.05 and scores["coverage"] < 0.05


class CountingExtractor(FeatureExtractor):
    """Delegates to a real backbone and counts forward passes."""

    def __init__(self, inner: FeatureExtractor) -> None:
        self.inner, self.calls = inner, 0
        self.name, self.dim, self.tag, self.device = inner.name, inner.dim, inner.tag, inner.device

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        return self.inner.embed(x)


def test_real_statistics_cache_hit_recomputes_nothing(mnist, classifier, tmp_path):
    counting = CountingExtractor(classifier)
    first = real_features(mnist, counting, 300, str(tmp_path))
    assert counting.calls > 0
    (path,) = tmp_path.glob("stats-*.npz")
    mtime, counting.calls = path.stat().st_mtime_ns, 0
    clear_memory_cache()
    from_disk = real_features(mnist, counting, 300, str(tmp_path))
    from_memory = real_features(mnist, counting, 300, str(tmp_path))
    assert counting.calls == 0 and path.stat().st_mtime_ns == mtime
    for cached in (from_disk, from_memory):
        assert torch.equal(cached.feats, first.feats) and torch.equal(cached.sigma, first.sigma)
        assert torch.equal(cached.probs, first.probs)


def test_classifier_cache_hit_loads_the_same_weights_without_training(mnist, classifier, cache_dir):
    (path,) = Path(cache_dir).glob(f"classifier-*-{mnist.fingerprint()}-*.pt")
    mtime = path.stat().st_mtime_ns
    again = load_classifier(mnist, cache_dir=cache_dir)
    assert again.tag == classifier.tag and path.stat().st_mtime_ns == mtime


def test_evaluator_returns_every_metric_for_a_random_dcgan(mnist, classifier, cache_dir):
    generator, _ = build_models(make_config({}), mnist.shape)
    evaluator = Evaluator(mnist, num_samples=200, cache_dir=cache_dir)
    rng_before = torch.get_rng_state()
    scores = evaluator(generator.eval(), latent_dim=100)
    assert set(scores) == KEYS and all(math.isfinite(v) for v in scores.values())
    assert evaluator(generator, latent_dim=100) == scores  # fixed latents: repeatable
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched


def test_evaluator_scores_replayed_real_digits_far_better_than_a_random_dcgan(mnist, splits, cache_dir):
    evaluator = Evaluator(mnist, num_samples=500, cache_dir=cache_dir)
    generator, _ = build_models(make_config({}), mnist.shape)
    real = evaluator(ReplayGenerator(splits[1]), latent_dim=100)
    random = evaluator(generator.eval(), latent_dim=100)
    assert 10 * real["fid"] < random["fid"]
    assert real["inception_score"] > 8 and real["precision"] > 0.6 > random["precision"]


def test_evaluate_images_scores_a_uint8_batch(mnist, splits, cache_dir):
    scores = evaluate_images(mnist, splits[1][:300], cache_dir=cache_dir)
    assert set(scores) == KEYS and scores["fid"] < 2


def test_unlabelled_dataset_with_classifier_backbone_says_to_use_inception(tmp_path):
    folder = ImageData("folder:/photos", torch.zeros(20, 3, 32, 32, dtype=torch.uint8), None)
    with pytest.raises(MetricError, match="--backbone inception"):
        Evaluator(folder, cache_dir=str(tmp_path))


def test_generated_images_of_the_wrong_shape_are_refused(mnist, classifier, cache_dir):
    evaluator = Evaluator(mnist, num_samples=50, cache_dir=cache_dir)
    with pytest.raises(MetricError, match=r"shape \(1, 32, 32\)"):
        evaluator.evaluate(torch.zeros(50, 1, 32, 32, dtype=torch.uint8))


def test_too_few_samples_are_refused_with_the_minimum(mnist, classifier, cache_dir):
    with pytest.raises(MetricError, match="at least 10"):
        Evaluator(mnist, num_samples=5, cache_dir=cache_dir)


def test_an_unknown_backbone_names_the_allowed_ones(mnist, cache_dir):
    with pytest.raises(MetricError, match="classifier, inception"):
        Evaluator(mnist, backbone="vgg", cache_dir=cache_dir)
