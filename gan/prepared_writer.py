"""Writing a prepared dataset (the format: gan/prepared.py) so that no one ever sees half
of one: where copies live, reuse of a matching copy, and a progress bar.

A writer fills a temporary sibling folder (`.NAME.partial-HOST-PID-RAND`) shard by shard,
holding one shard in memory, writes the manifest last and renames the folder into place:
a killed preparer leaves only a partial folder (removed by the next preparer on that
host once its process is gone), never a folder that looks whole. Two preparers of the
same copy at once both finish; the rename of the second fails, and it discards its own
copy and uses the first one's. A writer that fails removes its partial folder and every
parent folder it made: bad input creates nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from gan.images import DataError
from gan.prepared import (
    MANIFEST,
    Manifest,
    Shard,
    content_digest,
    open_prepared,
    sha256_of,
    shard_images,
    shard_names,
)

Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset ready to read, and whether it was there already."""

    manifest: Manifest
    reused: bool

    @property
    def path(self) -> Path:
        return self.manifest.path


def slug(text: str) -> str:
    """A folder-name-safe short name: letters, digits, '.', '_' and '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")
    return cleaned[:40] or "dataset"


def location(data_dir: str | Path, name: str, image_size: int, key: str) -> Path:
    """Where the copy of a source at a size is kept: data_dir/prepared/NAME-SIZEpx-KEY."""
    return Path(data_dir).expanduser().absolute() / "prepared" / f"{slug(name)}-{image_size}px-{key[:12]}"


def find_reusable(final: Path, key: str) -> Manifest | None:
    """The prepared copy at `final` if it is the one wanted (same key); None where nothing
    (or an empty folder) is there; a DataError where something else is."""
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        return None
    if not final.is_dir():
        raise DataError(f"{final} is a file: a prepared dataset is a folder; give another --out or --data-dir")
    manifest = open_prepared(final)
    if manifest.key != key:
        raise DataError(f"{final} holds another prepared dataset ({manifest.source} at {manifest.image_size}px): "
                        "delete it or choose another --out")
    return manifest


class ShardWriter:
    """Writes one prepared dataset into a partial folder; `finish` publishes it.

    Use as a context manager: leaving it without `finish` (an error, Ctrl-C) removes
    everything it made.
    """

    def __init__(self, final: Path, shape: tuple[int, int, int], has_labels: bool, total: int,
                 per_shard: int = 0) -> None:
        self.final = final.absolute()
        self.shape = shape
        self.has_labels = has_labels
        self.per_shard = min(per_shard, shard_images(shape)) if per_shard else shard_images(shape)
        # total: the images expected (0: unknown); a small dataset's buffer is only as big as it
        self._buffer = np.empty((self.per_shard if total <= 0 else min(self.per_shard, total), *shape), np.uint8)
        self._labels = np.empty(len(self._buffer), dtype="<i8")
        self._filled = 0
        self._shards: list[Shard] = []
        self._made: list[Path] = []  # parent folders this writer created, outermost first
        self._done = False
        host = slug(socket.gethostname())
        self.partial = self.final.parent / f".{self.final.name}.partial-{host}-{os.getpid()}-{secrets.token_hex(3)}"

    def __enter__(self) -> ShardWriter:
        missing = []
        for parent in [self.final.parent, *self.final.parent.parents]:
            if parent.exists():
                break
            missing.append(parent)
        try:
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                    self._made.append(folder)
                except FileExistsError:  # another preparer made it just now: fine, and not ours to remove
                    if not folder.is_dir():
                        raise
            _remove_stale_partials(self.final)
            self.partial.mkdir()
        except OSError as e:
            self._cleanup()
            raise DataError(f"a prepared dataset cannot be written in {self.final.parent} "
                            f"({e.strerror or e}): give a writable --data-dir or --out") from None
        return self

    def add(self, image: np.ndarray, label: int | None = None) -> None:
        """Append one uint8 [C, H, W] image (and its label); a full shard goes to disk."""
        if self._filled == len(self._buffer) < self.per_shard:  # more came than expected
            self._buffer = np.concatenate([self._buffer, np.empty((self.per_shard - self._filled, *self.shape),
                                                                  np.uint8)])
            self._labels = np.concatenate([self._labels, np.empty(self.per_shard - self._filled, "<i8")])
        elif self._filled == len(self._buffer):
            self._flush()
        self._buffer[self._filled] = image
        if self.has_labels:
            self._labels[self._filled] = label
        self._filled += 1

    def add_batch(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        for i in range(len(images)):
            self.add(images[i], None if labels is None else int(labels[i]))

    def add_shard(self, shard: Shard) -> None:
        """A shard someone else wrote into the partial folder (gan/prepare_chunks.py), next in order."""
        if self._filled:
            self._flush()
        self._shards.append(shard)

    def _flush(self) -> None:
        if self._filled == 0:
            return
        images_file, labels_file = shard_names(int(self._shards[-1].file[7:12]) + 1 if self._shards else 0)
        images = self._buffer[: self._filled]
        self._write(images_file, images)
        if self.has_labels:
            labels = self._labels[: self._filled]
            self._write(labels_file, labels)
            shard = Shard(images_file, self._filled, sha256_of(images), labels_file, sha256_of(labels))
        else:
            shard = Shard(images_file, self._filled, sha256_of(images))
        self._shards.append(shard)
        self._filled = 0

    def _write(self, name: str, array: np.ndarray) -> None:
        try:
            np.save(self.partial / name, array, allow_pickle=False)
        except OSError as e:
            raise DataError(f"{self.partial / name} cannot be written ({e.strerror or e})") from None

    def finish(self, source: str, name: str, key: str, image_size: int,
               skipped: list[dict[str, str]] | None = None) -> Prepared:
        """Write the manifest and rename the folder into place (or use a copy another
        preparer put there first)."""
        self._flush()
        count = sum(s.count for s in self._shards)
        if count == 0:
            raise DataError(f"{source}: no images left to prepare ({len(skipped or [])} skipped as bad)")
        manifest = Manifest(self.final, source, name, key, count, self.shape, "L" if self.shape[0] == 1 else "RGB",
                            self.has_labels, image_size, self.per_shard, tuple(self._shards),
                            content_digest(count, self.shape, self._shards), tuple(skipped or ()))
        text = json.dumps(manifest.to_json(), indent=1)
        try:
            (self.partial / MANIFEST).write_text(text)
            os.rename(self.partial, self.final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise DataError(f"the prepared dataset cannot be put at {self.final} ({e.strerror or e})") from None
            shutil.rmtree(self.partial, ignore_errors=True)  # another preparer won: use its copy
            self._done = True
            winner = find_reusable(self.final, key)
            assert winner is not None  # the rename failed because the folder is there and full
            return Prepared(winner, reused=True)
        self._done = True
        return Prepared(open_prepared(self.final), reused=False)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._done:
            self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):  # not empty: someone else put something there
                folder.rmdir()


def _remove_stale_partials(final: Path) -> None:
    """Partial folders of this copy left by killed preparers on this host."""
    prefix = f".{final.name}.partial-{slug(socket.gethostname())}-"
    for folder in final.parent.iterdir():
        pid = folder.name[len(prefix):].split("-")[0]
        if folder.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def tqdm_progress(desc: str, show: bool | None = None) -> Iterator[Progress]:
    """A Progress callback drawing an images bar on stderr (show=None: on a terminal only)."""
    from tqdm import tqdm

    bar: tqdm | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="img", disable=None if show is None else not show,
                       file=sys.stderr, leave=False, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
