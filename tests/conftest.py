"""Shared fixtures: small configs and the embedded dataset loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def mnist5k():
    from gan.data import load_dataset

    return load_dataset("mnist-5k")


@pytest.fixture(scope="session")
def mnist_small(mnist5k):
    """512 digits (shuffled across classes): enough for loop tests, fast on 2 cores."""
    import torch

    from gan.data import ImageData

    idx = torch.randperm(len(mnist5k), generator=torch.Generator().manual_seed(0))[:512]
    return ImageData("mnist-512", mnist5k.images[idx].clone(), mnist5k.labels[idx].clone())
