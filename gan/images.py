"""`ImageData` (a whole dataset in memory) and `DataError`: what every data module shares.

They live apart from gan/data.py so that the prepared-dataset modules (gan/prepared.py,
gan/prepare_folder.py), which gan/data.py itself uses, can build and raise them without
an import circle. gan/data.py re-exports both: callers keep importing them from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from gan.errors import UserError


class DataError(UserError):
    """A dataset cannot be loaded; the message is one line for the user."""


@dataclass(frozen=True)
class ImageData:
    """A whole dataset in memory: uint8 images [N, C, H, W] and optional int64 labels.

    `digest`: the content digest a prepared dataset's manifest records (gan/prepared.py);
    when set it is the fingerprint, so nothing is hashed again at load.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    digest: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        _, c, h, w = self.images.shape
        return c, h, w

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> str:
        """A short content hash: keys caches of per-dataset statistics and classifiers."""
        if self.digest is not None:
            return self.digest[:16]
        h = hashlib.sha1()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes()[: 1 << 24])
        h.update(self.images[-256:].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
