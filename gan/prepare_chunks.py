"""A folder's images prepared in chunks, one shard each: here, or on many processes.

prepare_folder (gan/prepare_folder.py) cuts the folder's sorted file list into chunks of
a shard's worth of files; `prepare_chunk` decodes one chunk (one image at a time) into
its own shard file in the writer's partial folder and says what it wrote. A `Runner`
runs the chunks: `run_here` one after the other in this process; the CLI's `data
prepare --parallel` hands them to Ray Data tasks (pipelines/distributed/prepare_on_ray.py),
which on a cluster write into a partial folder every node sees. Either way the shards
are the same bytes, named by chunk, and the manifest is written once, by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gan.decode_image import SKIP_HINT, BadImage, decode
from gan.image_folder import image_folder
from gan.images import DataError
from gan.prepared import Shard, sha256_of, shard_names


@dataclass(frozen=True)
class ChunkJob:
    """One shard's worth of files (paths relative to `root`), plain values: it travels."""

    index: int
    root: str  # the folder's spec (gan/image_folder.py): a path or a URI
    files: tuple[str, ...]
    mode: str  # L or RGB
    size: int
    partial: str  # the writer's partial folder
    skip_bad: bool


@dataclass(frozen=True)
class ChunkDone:
    index: int
    shard: Shard | None  # None: every file of the chunk was bad (and skipped)
    skipped: tuple[dict[str, str], ...] = field(default=())


Runner = Callable[[list[ChunkJob], Callable[[int], None]], Iterable[ChunkDone]]


def prepare_chunk(job: ChunkJob, one_done: Callable[[], None] | None = None) -> ChunkDone:
    """Decode the chunk's files into images-INDEX.npy (a DataError naming a bad file,
    unless skip_bad: then it is listed and left out)."""
    folder = image_folder(job.root)
    channels = 1 if job.mode == "L" else 3
    images = np.empty((len(job.files), channels, job.size, job.size), np.uint8)
    kept, skipped = 0, []
    for name in job.files:
        try:
            images[kept] = decode(folder, name, job.mode, job.size)
            kept += 1
        except BadImage as e:
            if not job.skip_bad:
                raise DataError(f"{e}: {SKIP_HINT}") from None
            skipped.append({"file": name, "reason": e.reason})
        if one_done is not None:
            one_done()
    if kept == 0:
        return ChunkDone(job.index, None, tuple(skipped))
    file = shard_names(job.index)[0]
    try:
        np.save(Path(job.partial) / file, images[:kept], allow_pickle=False)
    except OSError as e:
        raise DataError(f"{Path(job.partial) / file} cannot be written ({e.strerror or e})") from None
    return ChunkDone(job.index, Shard(file, kept, sha256_of(images[:kept])), tuple(skipped))


def run_here(jobs: list[ChunkJob], progress: Callable[[int], None]) -> Iterable[ChunkDone]:
    """Each chunk in turn in this process; progress(images done) after every image."""
    done = 0

    def one() -> None:
        nonlocal done
        done += 1
        progress(done)

    for job in jobs:
        yield prepare_chunk(job, one)
