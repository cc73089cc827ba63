"""The shared feature-statistics engine: features of image batches, and the real
set's statistics computed once per (dataset, backbone weights, sample count) and kept
in memory and on disk (npz)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from gan.data import Dataset, to_unit_range
from gan.metrics.base import FeatureExtractor, atomic_write, cache_root

REAL_SUBSET_SEED = 0  # fixed, so every run and trial shares the same real statistics


@dataclass(frozen=True)
class FeatureSet:
    """Features of one image set (CPU float32) with their float64 mean and covariance."""

    feats: torch.Tensor
    probs: torch.Tensor | None
    mu: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def of(cls, feats: torch.Tensor, probs: torch.Tensor | None = None) -> FeatureSet:
        """Summarise features [N, dim] (and optional class probabilities)."""
        feats = feats.detach().float().cpu()
        f64 = feats.double()
        probs = None if probs is None else probs.detach().float().cpu()
        return cls(feats, probs, f64.mean(dim=0), torch.cov(f64.T))

    def __len__(self) -> int:
        return self.feats.shape[0]


def progress_bar(total: int | None, desc: str, show: bool | None) -> tqdm:
    """An images bar on stderr. show=None: only on a terminal (tqdm's disable=None), so
    logs and Ray workers stay quiet, and only after 2 s, so quick extractions print nothing."""
    return tqdm(total=total, desc=desc, unit="img", disable=None if show is None else not show,
                delay=2.0 if show is None else 0.0, dynamic_ncols=True, leave=False)


@torch.no_grad()
def embed_all(
    extractor: FeatureExtractor, batches: Iterable[torch.Tensor], *,
    total: int | None = None, progress: bool | None = False, desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (and probs) of batches of images in [-1, 1], left on the extractor's device.

    progress: True always shows a bar, None on a terminal only, False never (the default:
    per-epoch evaluations run under the training loop's own bar)."""
    feats, probs = [], []
    # full precision even inside a caller's autocast: the cached real features are float32
    with torch.autocast(extractor.device.type, enabled=False), progress_bar(total, desc, progress) as bar:
        for x in batches:
            f, p = extractor.embed(x.to(extractor.device, torch.float32))
            feats.append(f.float())
            if p is not None:
                probs.append(p.float())
            bar.update(x.shape[0])
    return torch.cat(feats), (torch.cat(probs) if probs else None)


def extract(
    extractor: FeatureExtractor, images: torch.Tensor, progress: bool | None = None, desc: str = "features"
) -> FeatureSet:
    """FeatureSet of a uint8 image tensor [N, C, H, W], embedded batch by batch.

    A bar shows on a terminal when it takes more than 2 s (progress=None; see embed_all)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"extract takes uint8 images, got {images.dtype}")
    batches = (to_unit_range(b.to(extractor.device)) for b in images.split(extractor.batch_size))
    return FeatureSet.of(*embed_all(extractor, batches, total=len(images), progress=progress, desc=desc))


_MEMORY: dict[str, Any] = {}  # by key: real statistics, copy-check references (copies.py)
_MEMORY_LOCK = threading.Lock()


def real_subset(data: Dataset, num_samples: int) -> torch.Tensor:
    """The fixed seeded subset of real images the statistics are taken from."""
    g = torch.Generator().manual_seed(REAL_SUBSET_SEED)
    idx = torch.randperm(len(data), generator=g)[: min(num_samples, len(data))]
    return data.take(idx)  # a streamed dataset reads just these


def _save(path: Path, fs: FeatureSet) -> None:
    arrays: dict[str, Any] = {"feats": fs.feats.numpy(), "mu": fs.mu.numpy(), "sigma": fs.sigma.numpy()}
    if fs.probs is not None:
        arrays["probs"] = fs.probs.numpy()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    atomic_write(path, write)


def _load(path: Path) -> FeatureSet:
    with np.load(path, allow_pickle=False) as z:
        probs = torch.from_numpy(z["probs"]) if "probs" in z.files else None
        return FeatureSet(
            torch.from_numpy(z["feats"]),
            probs,
            torch.from_numpy(z["mu"]),
            torch.from_numpy(z["sigma"]),
        )


def real_features(
    data: Dataset, extractor: FeatureExtractor, num_samples: int, cache_dir: str | None = None,
    progress: bool | None = None,
) -> FeatureSet:
    """Real statistics of min(num_samples, N) images: memory, else disk, else computed
    (minutes with the Inception on a CPU: a bar on a terminal, see embed_all)."""
    n = min(num_samples, len(data))
    return cached(f"stats-{data.fingerprint()}-{extractor.tag}-n{n}", cache_dir, _save, _load,
                  lambda: extract(extractor, real_subset(data, n), progress,
                                  desc=f"real statistics ({extractor.name})"))


T = TypeVar("T")


def cached(key: str, cache_dir: str | None, save: Callable[[Path, T], None], load: Callable[[Path], T],
           compute: Callable[[], T]) -> T:
    """What `key` names: from memory, else from the disk cache (`key`.npz), else computed
    and kept in both."""
    with _MEMORY_LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    path = cache_root(cache_dir) / f"{key}.npz"
    if path.exists():
        value = load(path)
    else:
        value = compute()
        save(path, value)
    with _MEMORY_LOCK:
        _MEMORY[key] = value
    return value


def clear_memory_cache() -> None:
    """Forget in-memory real statistics and copy-check references (the disk cache stays)."""
    with _MEMORY_LOCK:
        _MEMORY.clear()
