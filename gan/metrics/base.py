"""Shared pieces of the metrics package: the error type, the feature-extractor
interface every backbone implements, and the on-disk cache (location, atomic writes,
a file lock so concurrent trials never train or write the same entry twice)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from gan.errors import UserError

CACHE_ENV = "GAN_PIPELINES_CACHE"


class MetricError(UserError):
    """A metric cannot be computed as asked; the message is one line for the user."""


class FeatureExtractor(ABC):
    """A frozen network mapping images in [-1, 1] (NCHW, on its device) to features."""

    name: str  # backbone name, e.g. "classifier"
    dim: int  # feature dimension
    tag: str  # identifies the weights: keys cached real statistics
    device: torch.device
    batch_size: int = 256  # images per forward pass

    @abstractmethod
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features [N, dim] and class probabilities [N, K] (None without a softmax head)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Features [N, dim] of images in [-1, 1]."""
        return self.embed(x)[0]

    def probs(self, x: torch.Tensor) -> torch.Tensor | None:
        """Softmax class probabilities [N, K], or None when the backbone has no head."""
        return self.embed(x)[1]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the argument, else $GAN_PIPELINES_CACHE, else ~/.cache/gan-pipelines."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gan-pipelines"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) then rename onto `path`, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (POSIX flock); elsewhere atomic writes suffice."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; two writers then only waste work
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
