"""A prepared dataset on disk: its format, and reading it (gan/prepared_writer.py writes it).

A prepared dataset is a folder of resized uint8 images, decoded once, that every run
reads instead of decoding its source again (StyleGAN2-ADA's dataset_tool.py answers the
same problem with one archive):

    manifest.json          what is in it (below); written last, so a folder without one
                           is never taken for a dataset
    images-00000.npy       uint8 [n, C, H, W], n = the manifest's shard_images but the last
    labels-00000.npy       int64 [n], only where the source has labels
    ...

Shards are plain .npy files, so `np.load(f, mmap_mode="r", allow_pickle=False)` reads one
shard, or a slice of one, without the rest: a streaming reader (Ray Data, one shard per
worker) needs nothing else. The manifest holds the format version, the source it was
prepared from, its name, its key (the source's identity: gan/prepare_folder.py), count,
shape [C, H, W], mode (L or RGB), has_labels, image_size, shard_images, the shards (file,
count, sha256 of the images' bytes, and labels / labels_sha256 where labelled), the files
skipped as bad (`data prepare --skip-bad`), and `digest`: sha256 of the canonical JSON
{"count": N, "shape": [C, H, W], "shards": [[sha256, labels_sha256 or null], ...]}. The
digest names the content (pixels and labels, not the .npy headers), so it is the dataset's
fingerprint (ImageData.digest): caches of its statistics and classifiers key on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan.images import DataError, ImageData

FORMAT = "gan-pipelines-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_IMAGES = 4096  # images per shard, unless that would pass SHARD_BYTES
SHARD_BYTES = 128 << 20  # the writer holds one shard in memory: bounded at any image size
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is kilobytes; its skipped list is bounded by the folder
_IMAGES = re.compile(r"^images-\d{5}\.npy$")  # names only: a manifest never points outside its folder
_LABELS = re.compile(r"^labels-\d{5}\.npy$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def shard_images(shape: tuple[int, int, int]) -> int:
    """Images per shard at this image shape: SHARD_IMAGES, fewer where they would pass SHARD_BYTES."""
    c, h, w = shape
    return max(1, min(SHARD_IMAGES, SHARD_BYTES // (c * h * w)))


def shard_names(index: int) -> tuple[str, str]:
    return f"images-{index:05d}.npy", f"labels-{index:05d}.npy"


@dataclass(frozen=True)
class Shard:
    file: str
    count: int
    sha256: str
    labels: str | None = None
    labels_sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A prepared dataset's manifest.json, checked (open_prepared), and where it lies."""

    path: Path  # the prepared dataset's folder
    source: str
    name: str
    key: str
    count: int
    shape: tuple[int, int, int]
    mode: str
    has_labels: bool
    image_size: int
    shard_images: int
    shards: tuple[Shard, ...]
    digest: str
    skipped: tuple[dict[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        shards = [{k: v for k, v in vars(s).items() if v is not None} for s in self.shards]
        return {"format": FORMAT, "version": FORMAT_VERSION, "source": self.source, "name": self.name,
                "key": self.key, "count": self.count, "shape": list(self.shape), "mode": self.mode,
                "has_labels": self.has_labels, "image_size": self.image_size, "shard_images": self.shard_images,
                "shards": shards, "digest": self.digest, "skipped": list(self.skipped)}


def content_digest(count: int, shape: tuple[int, int, int], shards: tuple[Shard, ...] | list[Shard]) -> str:
    """The dataset's digest: over its shards' digests, its shape and count (module docstring)."""
    body = {"count": count, "shape": list(shape), "shards": [[s.sha256, s.labels_sha256] for s in shards]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_of(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (the pixels, not the .npy header)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def open_prepared(path: str | Path) -> Manifest:
    """Read and check a prepared dataset's manifest (not its shards: load_prepared hashes
    those); every fault is one DataError line naming the file and what is wrong."""
    folder = Path(path).expanduser()
    file = folder / MANIFEST
    if not folder.is_dir():
        raise DataError(f"prepared dataset {str(folder)!r} does not exist or is not a folder")
    if not file.is_file():
        raise DataError(f"{str(folder)!r} is not a prepared dataset (it has no {MANIFEST}): make one with "
                        "`gan-pipeline data prepare SOURCE`")
    try:
        if file.stat().st_size > MAX_MANIFEST_BYTES:
            raise DataError(f"{file} is over {MAX_MANIFEST_BYTES} bytes: not a manifest this program wrote")
        raw = json.loads(file.read_text())
    except OSError as e:
        raise DataError(f"{file} cannot be read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested past any manifest
        raise DataError(f"{file} is not valid JSON ({str(e)[:80]}): prepare the dataset again") from None
    return _manifest(folder.resolve(), file, raw)


def _manifest(folder: Path, file: Path, raw: Any) -> Manifest:
    def bad(what: str) -> DataError:
        return DataError(f"{file} is invalid: {what}; prepare the dataset again (delete {folder})")

    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise bad(f"it is not a {FORMAT} manifest")
    if raw.get("version") != FORMAT_VERSION:
        raise DataError(f"{file} is format version {raw.get('version')!r}; this gan-pipelines reads version "
                        f"{FORMAT_VERSION}: prepare the dataset again with this version")

    def field(name: str, kind: type | tuple[type, ...], ok: Any = lambda v: True) -> Any:
        value = raw.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool) or not ok(value):
            raise bad(f"{name}={repr(value)[:80]}")
        return value

    count = field("count", int, lambda v: v > 0)
    shape = tuple(field("shape", list, lambda v: len(v) == 3 and all(type(x) is int and 0 < x <= 4096 for x in v)))
    mode = field("mode", str, lambda v: v == ("L" if shape[0] == 1 else "RGB" if shape[0] == 3 else None))
    has_labels = field("has_labels", bool)
    shards = tuple(_shard(s, has_labels, bad) for s in field("shards", list, lambda v: len(v) > 0))
    if sum(s.count for s in shards) != count:
        raise bad(f"its shards hold {sum(s.count for s in shards)} images, not count={count}")
    digest = field("digest", str)
    if content_digest(count, shape, shards) != digest:
        raise bad("its digest does not match its shards' digests")
    skipped = field("skipped", list, lambda v: all(isinstance(x, dict) for x in v))
    return Manifest(folder, field("source", str), field("name", str), field("key", str), count,
                    shape, mode, has_labels, field("image_size", int, lambda v: v == shape[1] == shape[2]),
                    field("shard_images", int, lambda v: v > 0), shards, digest,
                    tuple({str(k): str(v) for k, v in x.items()} for x in skipped))


def _shard(raw: Any, has_labels: bool, bad: Any) -> Shard:
    ok = (isinstance(raw, dict) and isinstance(raw.get("file"), str) and _IMAGES.match(raw["file"])
          and type(raw.get("count")) is int and raw["count"] > 0
          and isinstance(raw.get("sha256"), str) and _SHA.match(raw["sha256"]))
    if ok and has_labels:
        ok = (isinstance(raw.get("labels"), str) and _LABELS.match(raw["labels"])
              and isinstance(raw.get("labels_sha256"), str) and _SHA.match(raw["labels_sha256"]))
    if not ok:
        raise bad(f"shard entry {str(raw)[:120]}")
    if has_labels:
        return Shard(raw["file"], raw["count"], raw["sha256"], raw["labels"], raw["labels_sha256"])
    return Shard(raw["file"], raw["count"], raw["sha256"])


def read_shard(manifest: Manifest, shard: Shard, labels: bool = False) -> np.ndarray:
    """One shard's images (or labels) memory-mapped, checked against the manifest's shape
    and dtype (not its digest: load_prepared checks that while it copies)."""
    file = manifest.path / (shard.labels if labels and shard.labels else shard.file)
    want = (shard.count,) if labels else (shard.count, *manifest.shape)
    dtype = np.dtype("<i8") if labels else np.dtype(np.uint8)
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"prepared dataset shard {file} cannot be read ({str(e)[:80] or type(e).__name__}): "
                        f"prepare the dataset again (delete {manifest.path})") from None
    if array.shape != want or array.dtype != dtype:
        raise DataError(f"prepared dataset shard {file} holds {array.dtype} {tuple(array.shape)}, the manifest says "
                        f"{dtype} {want}: prepare the dataset again (delete {manifest.path})")
    return array


def load_prepared(path: str | Path, name: str | None = None) -> ImageData:
    """The whole prepared dataset in memory (the fast path for what fits): one uint8
    tensor, each shard checked against its sha256 as it is copied in (a corrupted or
    changed shard is one DataError line, never silently different data)."""
    m = open_prepared(path)
    images = torch.empty((m.count, *m.shape), dtype=torch.uint8)
    labels = torch.empty(m.count, dtype=torch.int64) if m.has_labels else None
    lo = 0
    for shard in m.shards:
        hi = lo + shard.count
        into = images[lo:hi].numpy()
        into[...] = read_shard(m, shard)  # read once from disk, then hashed in memory
        _verify(m, shard.file, into, shard.sha256)
        if labels is not None and shard.labels_sha256 is not None:
            into_labels = labels[lo:hi].numpy()
            into_labels[...] = read_shard(m, shard, labels=True)
            _verify(m, str(shard.labels), into_labels, shard.labels_sha256)
        lo = hi
    return ImageData(name or m.name, images, labels, digest=m.digest, origin=str(m.path))


def _verify(m: Manifest, file: str, array: np.ndarray, sha256: str) -> None:
    if sha256_of(array) != sha256:
        raise changed_shard(m, file)


def changed_shard(m: Manifest, file: str) -> DataError:
    """The one line for a shard whose bytes are not the manifest's (read whole or streamed)."""
    return DataError(f"prepared dataset shard {m.path / file} does not match its sha256 in {MANIFEST} "
                     f"(corrupted or changed): prepare the dataset again (delete {m.path})")
