"""`ImageData` (a whole dataset in memory) and `DataError`: what every data module shares.

They live apart from gan/data.py so that the prepared-dataset modules (gan/prepared.py,
gan/prepare_folder.py), which gan/data.py itself uses, can build and raise them without
an import circle. gan/data.py re-exports both: callers keep importing them from there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    origin: str | None = None  # the prepared dataset's folder it was read from, if any

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        _, c, h, w = self.images.shape
        return c, h, w

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` (as StreamedImages.take: the loop asks either the same way)."""
        return self.images[index.to(self.images.device)]

    def fingerprint(self) -> str:
        """A short content hash: keys caches of per-dataset statistics and classifiers."""
        if self.digest is not None:
            return self.digest[:16]
        h = hashlib.sha1()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes()[: 1 << 24])
        h.update(self.images[-256:].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Bilinear (antialiased) resize of a uint8 batch, in chunks to bound memory."""
    out = []
    for part in images.split(chunk):
        x = F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)
