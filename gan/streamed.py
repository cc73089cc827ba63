"""A prepared dataset read image by image from its shards: no process holds it whole.

`StreamedImages` stands where an in-memory `ImageData` stands (name, shape, len, labels,
fingerprint, `take`), so training, scoring and recording need not know which one they
have. The training loop asks each step for the images of its rank's slice of the global
batch (gan/data.rank_batch_indices: the permutation of (seed, epoch)), so a streamed run
sees exactly the batches an in-memory run sees, and a resumed run exactly the batches
it would have seen: every rank reads only its own images, disjoint from the others'.

Reads are `os.pread` of each image's bytes from its shard's .npy (adjacent images in one
read): no mmap, whose touched pages would count in the process's memory and grow with
the dataset. Each shard's sha256 is checked the first time this process touches it (and
again if its file changed since), in chunks, so a corrupted or changed shard is one
DataError line, as in load_prepared, and the check's memory stays one chunk. At most
MAX_OPEN shard files are open at once (the least recently read is closed first).

Pickles as its manifest only (open files are reopened where it lands): a sweep hands
it to every trial, and Ray Train to every worker, in bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gan.images import DataError
from gan.prepared import Manifest, Shard, changed_shard, read_shard, sha256_of

_HASH_CHUNK = 8 << 20  # bytes hashed at a time when a shard is first checked
MAX_OPEN = 64  # shard files held open at once per process


@dataclass
class _OpenShard:
    fd: int
    offset: int  # where the pixels start (after the .npy header)


@dataclass
class StreamedImages:
    """A prepared dataset, read on demand (module docstring)."""

    manifest: Manifest
    name: str
    # the shards open now, least recently read first (at most MAX_OPEN: a folder's copy may
    # have thousands), and each checked shard's file identity (inode, size, mtime)
    _open: OrderedDict[int, _OpenShard] = field(default_factory=OrderedDict, repr=False, compare=False)
    _checked: dict[int, tuple[int, int, int]] = field(default_factory=dict, repr=False, compare=False)
    _labels: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = np.array([s.count for s in self.manifest.shards], dtype=np.int64)
        self._starts = np.concatenate(([0], np.cumsum(counts)))
        c, h, w = self.manifest.shape
        self._image_bytes = c * h * w

    # ---- what ImageData has too
    @property
    def shape(self) -> tuple[int, int, int]:
        return self.manifest.shape

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def origin(self) -> str:
        """Where the prepared dataset lies (the MLflow dataset input's source)."""
        return str(self.manifest.path)

    def fingerprint(self) -> str:
        return self.manifest.digest[:16]

    @property
    def labels(self) -> torch.Tensor | None:
        """All labels in memory (8 bytes an image: 1.6 MB at 200,000), read once."""
        if not self.manifest.has_labels:
            return None
        if self._labels is None:
            parts = []
            for shard in self.manifest.shards:
                array = np.array(read_shard(self.manifest, shard, labels=True))
                if sha256_of(array) != shard.labels_sha256:
                    raise self._changed(str(shard.labels))
                parts.append(torch.from_numpy(array))
            self._labels = torch.cat(parts)
        return self._labels

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` (any order, repeats allowed) as uint8 [n, C, H, W]."""
        idx = index.detach().to("cpu", torch.int64).numpy()
        out = np.empty((len(idx), *self.shape), dtype=np.uint8)
        if len(idx) == 0:
            return torch.from_numpy(out)
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"image index out of range 0..{len(self) - 1}")
        order = np.argsort(idx, kind="stable")  # read in file order; runs of neighbours in one read
        flat = out.reshape(len(idx), -1)
        shard_of = np.searchsorted(self._starts, idx[order], side="right") - 1
        i = 0
        while i < len(order):
            s, first = shard_of[i], idx[order[i]]
            j = i + 1
            while j < len(order) and shard_of[j] == s and idx[order[j]] == idx[order[j - 1]] + 1:
                j += 1
            block = self._read(int(s), int(first - self._starts[s]), j - i)
            flat[order[i:j]] = block.reshape(j - i, -1)
            i = j
        return torch.from_numpy(out)

    # ---- reading
    def _read(self, shard: int, first: int, count: int) -> np.ndarray:
        opened = self._open.get(shard)
        if opened is None:
            opened = self._opening(shard)
        else:
            self._open.move_to_end(shard)
        nbytes = count * self._image_bytes
        data = os.pread(opened.fd, nbytes, opened.offset + first * self._image_bytes)
        if len(data) != nbytes:
            raise self._changed(self.manifest.shards[shard].file)
        return np.frombuffer(data, dtype=np.uint8)

    def _opening(self, index: int) -> _OpenShard:
        shard = self.manifest.shards[index]
        path = self.manifest.path / shard.file
        if index not in self._checked:
            read_shard(self.manifest, shard)  # its header: the shape and dtype the manifest says
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            nbytes = shard.count * self._image_bytes
            offset = st.st_size - nbytes  # a C-order .npy: header, then exactly the pixels
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._checked.get(index) != identity:  # first read here, or the file changed since
                if offset <= 0 or not self._matches(fd, offset, nbytes, shard):
                    raise self._changed(shard.file)
                self._checked[index] = identity
        except BaseException:
            os.close(fd)
            raise
        if len(self._open) >= MAX_OPEN:
            os.close(self._open.popitem(last=False)[1].fd)
        self._open[index] = opened = _OpenShard(fd, offset)
        return opened

    @staticmethod
    def _matches(fd: int, offset: int, nbytes: int, shard: Shard) -> bool:
        digest = hashlib.sha256()
        for lo in range(0, nbytes, _HASH_CHUNK):
            digest.update(os.pread(fd, min(_HASH_CHUNK, nbytes - lo), offset + lo))
        return digest.hexdigest() == shard.sha256

    def _changed(self, file: str) -> DataError:
        return changed_shard(self.manifest, file)

    def close(self) -> None:
        for opened in self._open.values():
            os.close(opened.fd)
        self._open.clear()

    def __del__(self) -> None:
        self.close()

    # ---- pickling: the manifest travels, never open files
    def __getstate__(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["manifest"], state["name"])  # type: ignore[misc]


def decoded_bytes(manifest: Manifest) -> int:
    """What the whole dataset takes in memory as uint8."""
    c, h, w = manifest.shape
    return manifest.count * c * h * w

