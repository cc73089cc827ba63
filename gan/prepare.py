"""`gan-pipeline data prepare SOURCE`: any dataset a run can name, prepared once.

A folder goes through gan/prepare_folder.py (one image at a time); a built-in dataset is
loaded as training loads it (gan/data.py, resized the same way) and written with its
labels. Its copy is keyed by name, image size and format version: the same copy is
found again without loading anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gan.builtin_datasets import load_builtin
from gan.config import BUILTIN_DATASETS
from gan.images import DataError, ImageData, resize_uint8
from gan.prepare_chunks import Runner
from gan.prepare_folder import prepare_folder
from gan.prepared import FORMAT_VERSION
from gan.prepared_writer import Prepared, Progress, ShardWriter, find_reusable, location

# (channels, side) of each built-in dataset as it is stored: known before loading, so the
# place to write is tried before a download.
NATIVE = {"mnist-5k": (1, 28), "mnist": (1, 28), "fashion-mnist": (1, 28), "cifar10": (3, 32), "svhn": (3, 32)}
assert set(NATIVE) == set(BUILTIN_DATASETS)
SOURCES = ", ".join(BUILTIN_DATASETS) + ", folder:PATH"


def prepare_dataset(source: str, image_size: int = 0, data_dir: str | Path = "./data",
                    out: str | Path | None = None, skip_bad: bool = False,
                    progress: Progress | None = None, runner: Runner | None = None) -> Prepared:
    """Prepare `source` (a built-in dataset's name or folder:PATH) at `image_size` (0: its
    own size; folders: 32) into data_dir/prepared/ (or `out`), or find the copy made
    before. runner: where a folder's chunks are decoded (gan/prepare_chunks.py; a built-in
    dataset is loaded whole here anyway)."""
    if source.startswith("folder:") and len(source) > len("folder:"):
        return prepare_folder(source[len("folder:"):], image_size, data_dir, out, skip_bad, progress, runner)
    if source.startswith("prepared:"):
        raise DataError(f"{source} is prepared already: train on it with --dataset {source}")
    if source not in NATIVE:
        raise DataError(f"dataset {source!r} is invalid: must be one of {SOURCES}")
    channels, side = NATIVE[source]
    size = image_size or side
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, "builtin", source, size]).encode()).hexdigest()
    final = Path(out).expanduser().absolute() if out else location(data_dir, source, size, key)
    found = find_reusable(final, key)
    if found is not None:
        return Prepared(found, reused=True)
    # The writer's folder is made first: a place that cannot be written fails before a download.
    with ShardWriter(final, (channels, size, size), True, 0) as writer:
        data = load_builtin(source, data_dir)
        if data.shape[1:] != (size, size):  # resized as training resizes it
            data = ImageData(data.name, resize_uint8(data.images, size), data.labels)
        images, labels = data.images.numpy(), data.labels.numpy() if data.labels is not None else None
        assert data.shape == (channels, size, size) and labels is not None  # NATIVE is right, all are labelled
        step = 1024
        for lo in range(0, len(images), step):
            writer.add_batch(images[lo:lo + step], labels[lo:lo + step])
            if progress is not None:
                progress(min(lo + step, len(images)), len(images))
        return writer.finish(source, source, key, size)
