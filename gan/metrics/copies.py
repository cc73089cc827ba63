"""The copy check: does a generator hand back its training images? (Alaa et al., 2022,
"authenticity"; StudioGAN's nearest training neighbours.)

For each generated sample g, r* is its nearest training image in the backbone's feature
space. g counts as a copy when it sits closer to r* than any other training image does,
d(g, r*) < d(r*, NN(r*)): a sample drawn from the data's distribution, not from the
training set itself, lands there about half the time (benchmarks/RESULTS.md), a verbatim
copy every time (its distance is ~0).

The reference is the training set (a fixed seeded subset of REFERENCE_CAP images when it
is larger), its features and nearest-other distances computed once per (dataset, backbone
weights) and kept in memory and on disk like the real statistics (gan.metrics.engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gan.data import Dataset, to_unit_range
from gan.metrics.base import FeatureExtractor, atomic_write
from gan.metrics.engine import REAL_SUBSET_SEED, cached, embed_all, progress_bar
from gan.metrics.prdc import CHUNK, knn_radii

REFERENCE_CAP = 50_000  # training images a sample is compared with (FID's usual 50k)
READ_SLICE = 4096  # training images read and embedded at a time


@dataclass(frozen=True)
class TrainingReference:
    """Features of the training images the copy check compares with (CPU float32), their
    dataset indices, and each one's distance to its nearest other reference image."""

    feats: torch.Tensor
    index: torch.Tensor
    radii: torch.Tensor

    @classmethod
    def of(cls, feats: torch.Tensor, index: torch.Tensor) -> TrainingReference:
        feats = feats.detach().float().cpu()
        return cls(feats, index.long(), knn_radii(feats, k=1))

    def __len__(self) -> int:
        return self.feats.shape[0]


def nearest(reference: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, row) of each row of x's nearest row of `reference`."""
    dists, rows = [], []
    for part in x.float().cpu().split(CHUNK):
        d, i = torch.cdist(part, reference).min(dim=1)
        dists.append(d)
        rows.append(i)
    return torch.cat(dists), torch.cat(rows)


def copy_scores(reference: TrainingReference, fake: torch.Tensor) -> dict[str, float]:
    """copy_share: share of the fakes closer to their nearest training image than that
    image's nearest other training image is (1 - Alaa et al.'s authenticity); copy_ratio:
    the median of that distance ratio (about 1 for honest samples, 0 for copies)."""
    d, rows = nearest(reference.feats, fake)
    radius = reference.radii[rows]
    ratio = d / radius.clamp_min(torch.finfo(torch.float32).tiny)
    return {"copy_share": float((d < radius).float().mean()), "copy_ratio": float(ratio.quantile(0.5))}


def reference_subset(n: int) -> torch.Tensor:
    """The dataset indices the reference holds: all of them, or REFERENCE_CAP seeded ones."""
    if n <= REFERENCE_CAP:
        return torch.arange(n)
    g = torch.Generator().manual_seed(REAL_SUBSET_SEED)
    return torch.randperm(n, generator=g)[:REFERENCE_CAP].sort().values


def training_reference(
    data: Dataset, extractor: FeatureExtractor, cache_dir: str | None = None, progress: bool | None = None
) -> TrainingReference:
    """The copy check's reference for `data`: memory, else disk, else computed (every
    training image through the backbone once: a bar on a terminal when it takes > 2 s)."""
    index = reference_subset(len(data))
    return cached(f"copyref-{data.fingerprint()}-{extractor.tag}-n{len(index)}", cache_dir, _save, _load,
                  lambda: TrainingReference.of(_features(data, extractor, index, progress), index))


def _features(data: Dataset, extractor: FeatureExtractor, index: torch.Tensor,
              progress: bool | None) -> torch.Tensor:
    # read in slices, so a streamed dataset never holds 50k images at once; one bar for all
    feats = []
    with progress_bar(len(index), f"copy-check reference ({extractor.name})", progress) as bar:
        for part in index.split(READ_SLICE):
            images = data.take(part)
            batches = (to_unit_range(b.to(extractor.device)) for b in images.split(extractor.batch_size))
            feats.append(embed_all(extractor, batches)[0].cpu())
            bar.update(len(part))
    return torch.cat(feats)


def _save(path: Path, ref: TrainingReference) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, feats=ref.feats.numpy(), index=ref.index.numpy(), radii=ref.radii.numpy())

    atomic_write(path, write)


def _load(path: Path) -> TrainingReference:
    with np.load(path, allow_pickle=False) as z:
        return TrainingReference(torch.from_numpy(z["feats"]), torch.from_numpy(z["index"]),
                                 torch.from_numpy(z["radii"]))


class CopyingGenerator(nn.Module):
    """A generator that returns training images verbatim, each latent picking one: the
    memorizer the copy check must flag. Exportable (a buffer and an index), so it logs,
    serves and re-evaluates like a trained generator."""

    images: torch.Tensor

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", to_unit_range(images))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # a latent's first coordinate, finely quantised, picks the image: distinct z, distinct copies
        pick = (z[:, 0] * 1e4).floor().long().remainder(self.images.shape[0])
        return self.images[pick]
