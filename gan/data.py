"""What a run trains on: a whole dataset in memory, or a prepared one streamed.

In memory (ImageData, gan/images.py): one uint8 tensor [N, C, H, W] the training loop
indexes on the device; the fast path for what fits (the built-ins: gan/builtin_datasets.py).
Streamed (StreamedImages, gan/streamed.py): each step reads its rank's slice of the
batch from a prepared dataset's shards; no process holds the dataset. `folder:PATH` is
prepared once (gan/prepare_folder.py) and `prepared:PATH` names a prepared dataset
(gan/prepared.py). Either way the batches are those of rank_batch_indices: the
permutation of (seed, epoch), so both give the same training.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from gan.builtin_datasets import BUILTIN, load_builtin
from gan.config import DATA_MODES, RunConfig
from gan.images import DataError, ImageData, resize_uint8
from gan.prepare import prepare_dataset
from gan.prepare_folder import FOLDER_DEFAULT_SIZE, folder_prepared
from gan.prepared import load_prepared, open_prepared
from gan.streamed import StreamedImages, decoded_bytes

__all__ = ["DATA_MODES", "DataError", "Dataset", "ImageData", "StreamedImages", "epoch_permutation",
           "load_dataset", "rank_batch_indices", "resize_uint8", "to_uint8", "to_unit_range"]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the range of G's tanh output)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped."""
    return ((images.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


# What the loop trains on: the whole dataset in memory, or streamed from its shards.
Dataset = ImageData | StreamedImages


def load_dataset(name: str, data_dir: str | Path = "./data", image_size: int = 0, mode: str = "auto",
                 budget_mb: int = RunConfig.data_budget_mb) -> Dataset:
    """A dataset by config name, resized to `image_size` when it is non-zero.

    folder:PATH is prepared once into data_dir/prepared/ (gan/prepare_folder.py) and read
    from there; prepared:PATH names a prepared dataset's folder (`gan-pipeline data
    prepare`). Both spell out their kind, as a bare path could be taken for a name.

    mode: "memory" holds it whole (the fast path for what fits); "stream" reads each
    batch from the prepared shards (gan/streamed.py; a built-in dataset is prepared once
    for it); "auto" streams a prepared or folder dataset whose decoded images pass
    `budget_mb`, and holds the rest.
    """
    if mode not in DATA_MODES:
        raise DataError(f"data_mode={mode!r} is invalid: must be one of {', '.join(DATA_MODES)}")
    if name.startswith("folder:"):
        manifest = folder_prepared(name, image_size or FOLDER_DEFAULT_SIZE, Path(data_dir).expanduser())
    elif name.startswith("prepared:"):
        manifest = open_prepared(Path(name[len("prepared:") :]).expanduser())
    elif name in BUILTIN:
        if mode != "stream":  # built-ins fit: MNIST is 47 MB, SVHN 225 MB
            return _resized(load_builtin(name, data_dir), image_size)
        manifest = prepare_dataset(name, image_size, data_dir).manifest
    else:
        raise DataError(f"dataset={name!r} is invalid: must be one of {', '.join(BUILTIN)}, folder:PATH, "
                        "prepared:PATH")
    if mode == "memory" or (mode == "auto" and decoded_bytes(manifest) <= budget_mb << 20):
        return _resized(load_prepared(manifest.path, name=name), image_size)
    if image_size and manifest.image_size != image_size:
        raise DataError(f"dataset {name!r} is prepared at {manifest.image_size} px and streamed as it is: "
                        f"prepare it at {image_size} px (gan-pipeline data prepare SOURCE --image-size "
                        f"{image_size}) or drop --image-size")
    return StreamedImages(manifest, name)


def _resized(data: ImageData, image_size: int) -> ImageData:
    if image_size and data.shape[1:] != (image_size, image_size):
        return ImageData(data.name, resize_uint8(data.images, image_size), data.labels, origin=data.origin)
    return data


# --------------------------------------------------------------------------- batching


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The same permutation on every rank: seeded by (seed, epoch) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def rank_batch_indices(
    n: int, global_batch: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """Yield this rank's slice of each global batch of one epoch (last partial dropped).

    Every rank walks the same permutation and takes its contiguous 1/world slice, so
    N workers at global batch B see exactly the samples one worker at batch B sees.
    """
    per_rank = global_batch // world_size
    # One copy to the device per epoch; the per-step slices are then free.
    perm = epoch_permutation(n, seed, epoch).to(device)
    for start in range(0, n - global_batch + 1, global_batch):
        lo = start + rank * per_rank
        yield perm[lo : lo + per_rank]
