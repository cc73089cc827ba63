"""Backbones by name: `load_backbone(name, data, device)` -> a FeatureExtractor.

A new backbone is a loader function plus one entry in BACKBONES. Loaded extractors
are kept per process, so repeated Evaluators (epochs, in-process trials) reuse them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import torch

from gan.data import Dataset
from gan.metrics.base import FeatureExtractor, MetricError
from gan.metrics.classifier import load_classifier
from gan.metrics.inception import WEIGHTS_ENV, load_inception

Loader = Callable[[Dataset, torch.device, str | None], FeatureExtractor]


def _classifier(data: Dataset, device: torch.device, cache_dir: str | None) -> FeatureExtractor:
    return load_classifier(data, device, cache_dir)


def _inception(data: Dataset, device: torch.device, cache_dir: str | None) -> FeatureExtractor:
    return load_inception(None, device)


BACKBONES: dict[str, Loader] = {"classifier": _classifier, "inception": _inception}

_LOADED: dict[tuple[str, ...], FeatureExtractor] = {}
_LOCK = threading.Lock()


def load_backbone(
    name: str, data: Dataset, device: torch.device | str = "cpu", cache_dir: str | None = None
) -> FeatureExtractor:
    """The named backbone for `data` on `device`, loaded once per process."""
    if name not in BACKBONES:
        raise MetricError(f"backbone={name!r} is invalid: must be one of {', '.join(BACKBONES)}")
    device = torch.device(device)
    key: tuple[str, ...]
    if name == "classifier":  # one classifier per dataset; Inception is dataset-independent
        key = (name, data.fingerprint(), str(data.shape), str(device), str(cache_dir))
    else:
        key = (name, str(device), os.environ.get(WEIGHTS_ENV, ""))
    with _LOCK:  # also serialises first loads, so threads never train twice
        if key not in _LOADED:
            _LOADED[key] = BACKBONES[name](data, device, cache_dir)
        return _LOADED[key]
