"""`Evaluator`: what the training loop calls each eval; `evaluate_images` for image batches.

Both score generated images against the dataset's cached real statistics with every
metric in METRICS, and run the copy check (gan.metrics.copies: copy_share, copy_ratio)
against the training set's cached features. Under DDP each rank generates its share and features are gathered
once, so every rank returns the same scores for exactly `num_samples` images.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from gan.data import Dataset, to_unit_range
from gan.metrics.backbones import load_backbone
from gan.metrics.base import MetricError
from gan.metrics.copies import copy_scores, nearest, training_reference
from gan.metrics.distributed import any_rank, gather_rows, rank_share, world
from gan.metrics.engine import FeatureSet, embed_all, extract, real_features
from gan.metrics.registry import compute_metrics
from gan.sampling import NonFiniteImages, eval_view, generate_uint8, image_grid, sample_latents

MIN_SAMPLES = 10  # k-NN radii (k=5) and KID subsets need a handful of samples per set
PANEL_SAMPLES = 16  # the copy-check panel: the first samples scored, above their nearest training images


class Evaluator:
    """Scores of generators against one dataset; real statistics prepared on construction."""

    def __init__(
        self,
        data: Dataset,
        backbone: str = "classifier",
        num_samples: int = 1000,
        device: torch.device | str = "cpu",
        seed: int = 0,
        cache_dir: str | None = None,
        progress: bool | None = None,
    ) -> None:
        """progress: a bar on stderr for the real statistics and each eval's features when
        they take over 2 s; None: only on a terminal, True always, False never."""
        if min(num_samples, len(data)) < MIN_SAMPLES:
            raise MetricError(
                f"num_samples={num_samples} with {len(data)} real images is too few: "
                f"the metrics need at least {MIN_SAMPLES} of each"
            )
        self.image_shape = data.shape
        self.num_samples = num_samples
        self.device = torch.device(device)
        self.seed = seed
        # fail fast (before training starts) on a backbone the dataset cannot use
        self.extractor = load_backbone(backbone, data, self.device, cache_dir)
        self.progress = progress
        self.real = real_features(data, self.extractor, num_samples, cache_dir, progress=progress)
        self.data = data  # the copy-check panel reads its nearest training images from it
        self.reference = training_reference(data, self.extractor, cache_dir, progress=progress)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != tuple(self.image_shape):
            raise MetricError(
                f"images of shape {tuple(shape)} cannot be scored against a dataset of shape {tuple(self.image_shape)}"
            )

    @torch.no_grad()
    def __call__(self, generator: nn.Module, latent_dim: int) -> dict[str, float]:
        """Generate num_samples images (outputs in [-1, 1]) and score them.

        G runs in its eval view whatever mode the caller holds it in, so scoring never
        changes it (BatchNorm running statistics included) and the score is that of the
        eval-mode generator a run saves. Returns fid, kid, kid_std, precision, recall,
        density, coverage, copy_share, copy_ratio and, when the backbone has a softmax
        head, inception_score.
        """
        if isinstance(generator, nn.parallel.DistributedDataParallel):
            generator = generator.module  # DDP's forward would sync buffers per batch
        rank, world_size = world()
        if self.num_samples < world_size:
            raise MetricError(f"eval_samples={self.num_samples} is below the world size {world_size}")
        # Every rank draws the same num_samples latents and scores its slice: the union is
        # what one process would score, so the value does not depend on the world size
        # and `gan-pipeline evaluate` of the saved model reproduces it.
        start = sum(rank_share(self.num_samples, r, world_size) for r in range(rank))
        z = sample_latents(self.num_samples, latent_dim, self.seed)
        z = z[start : start + rank_share(self.num_samples, rank, world_size)]
        try:
            with eval_view(generator):
                images = generate_uint8(generator, z, self.device)
            broken = False
        except NonFiniteImages:
            broken = True
        if any_rank(broken, world_size, self.device):  # every rank refuses, or none does
            raise NonFiniteImages("the generator's images are not finite (NaN or inf): nothing to score")
        self._check_shape(images.shape[1:])
        feats, probs = embed_all(self.extractor, self._batches(images), total=len(images),
                                 progress=self.progress and rank == 0, desc=f"scoring ({self.extractor.name})")
        if world_size > 1:
            feats = gather_rows(feats)
            probs = None if probs is None else gather_rows(probs)
        return self._scores(FeatureSet.of(feats, probs))

    def _scores(self, fake: FeatureSet) -> dict[str, float]:
        return {**compute_metrics(self.real, fake), **copy_scores(self.reference, fake.feats)}

    @torch.no_grad()
    def copy_panel(self, generator: nn.Module, latent_dim: int, n: int = PANEL_SAMPLES) -> np.ndarray:
        """The copy check as a picture: the first n samples scored (top row) above their
        nearest training images (bottom row), a uint8 HxW(x3) grid. On one process: the
        n latents are the first of the scored ones, so no rank needs another's images."""
        if isinstance(generator, nn.parallel.DistributedDataParallel):
            generator = generator.module
        z = sample_latents(self.num_samples, latent_dim, self.seed)[:n]
        with eval_view(generator):
            samples = generate_uint8(generator, z, self.device)
        feats, _ = embed_all(self.extractor, self._batches(samples), total=len(samples))
        _, rows = nearest(self.reference.feats, feats)
        neighbours = self.data.take(self.reference.index[rows]).cpu()
        return image_grid(torch.cat([samples, neighbours]), nrow=len(samples))

    def estimate_seconds(self, generator: nn.Module, latent_dim: int, probe: int = 16) -> float:
        """What one eval of this rank's share will take, from generating and embedding
        `probe` images (2% of a 1000-image eval): the eval budget needs it before the
        first eval. Errs high (first-call warm-up included), so the first eval waits."""
        if isinstance(generator, nn.parallel.DistributedDataParallel):
            generator = generator.module
        rank, world_size = world()
        n = min(probe, self.num_samples)
        started = time.perf_counter()
        try:
            with eval_view(generator):
                images = generate_uint8(generator, sample_latents(n, latent_dim, self.seed + 1), self.device)
        except NonFiniteImages:
            return 0.0  # nothing to time: the eval itself will report it
        embed_all(self.extractor, self._batches(images), total=n, progress=False, desc="")
        per_image = (time.perf_counter() - started) / n
        return per_image * rank_share(self.num_samples, rank, world_size)

    def _batches(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        # uint8 then [-1, 1]: generated images are quantised like the real data (bit depth
        # is no signal), and batched as extract() batches a saved model's images
        for part in images.split(self.extractor.batch_size):
            yield to_unit_range(part.to(self.device))

    def evaluate(self, images: torch.Tensor) -> dict[str, float]:
        """Score a uint8 image batch [N, C, H, W] (all of it, on this process only)."""
        self._check_shape(images.shape[1:])
        if len(images) < MIN_SAMPLES:
            raise MetricError(f"{len(images)} images are too few: the metrics need {MIN_SAMPLES}")
        return self._scores(extract(self.extractor, images))


class ReplayGenerator(nn.Module):
    """A stand-in generator that returns given real images in turn, ignoring its latents:
    scores a real split as if generated (the floor any generator is measured against)."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images, self.next = to_unit_range(images), 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.images[self.next : self.next + len(z)]
        self.next += len(z)
        return out


def evaluate_images(
    real: Dataset,
    fake: torch.Tensor,
    backbone: str = "classifier",
    num_samples: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    cache_dir: str | None = None,
) -> dict[str, float]:
    """Scores of uint8 images `fake` against `real` (num_samples real images; default len(fake))."""
    evaluator = Evaluator(real, backbone, num_samples or len(fake), device, seed, cache_dir)
    return evaluator.evaluate(fake)
