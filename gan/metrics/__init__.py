"""FID-style metrics in pure PyTorch: Frechet distance, KID, precision/recall/density/
coverage and Inception Score over the features of a backbone (a dataset classifier or
the FID Inception), with real statistics cached per dataset and backbone, and the copy
check (copies.py: how many samples sit on a training image).

    evaluator = Evaluator(data, backbone="classifier", num_samples=1000, device=device)
    scores = evaluator(generator, latent_dim)   # {"fid": ..., "kid": ..., ...}
"""

from gan.metrics.backbones import BACKBONES, load_backbone
from gan.metrics.base import FeatureExtractor, MetricError, cache_root
from gan.metrics.classifier import load_classifier
from gan.metrics.engine import FeatureSet, extract, real_features
from gan.metrics.evaluator import Evaluator, ReplayGenerator, evaluate_images
from gan.metrics.frechet import frechet_distance
from gan.metrics.inception import load_inception
from gan.metrics.inception_score import inception_score
from gan.metrics.kid import kernel_inception_distance
from gan.metrics.prdc import prdc
from gan.metrics.registry import METRICS, compute_metrics

__all__ = [
    "BACKBONES",
    "METRICS",
    "Evaluator",
    "ReplayGenerator",
    "FeatureExtractor",
    "FeatureSet",
    "MetricError",
    "cache_root",
    "compute_metrics",
    "evaluate_images",
    "extract",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "load_backbone",
    "load_classifier",
    "load_inception",
    "prdc",
    "real_features",
]
