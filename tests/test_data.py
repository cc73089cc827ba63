"""Dataset loading for each source, from files the tests write in the official formats."""

from __future__ import annotations

import gzip
import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch

from gan.data import DataError, load_dataset, rank_batch_indices, to_uint8, to_unit_range
from gan.safe_files import md5_of


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(data)


def test_embedded_mnist_5k_is_5000_real_digits_with_balanced_labels(mnist5k):
    assert mnist5k.images.shape == (5000, 1, 28, 28) and mnist5k.images.dtype == torch.uint8
    assert torch.bincount(mnist5k.labels).tolist() == [500] * 10
    assert 20 < mnist5k.images.float().mean() < 60  # mostly black background, white strokes


@pytest.mark.parametrize(("name", "folder", "gz"), [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True)])
def test_mnist_family_reads_torchvision_raw_idx_files(tmp_path, name, folder, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28))
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / folder / "raw" / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / folder / "raw" / f"train-labels-idx1-ubyte{suffix}", np.arange(10), gz)
    data = load_dataset(name, tmp_path)
    assert data.images.shape == (10, 1, 28, 28)
    assert torch.equal(data.images[3, 0], torch.from_numpy(images[3].astype(np.uint8)))
    assert data.labels.tolist() == list(range(10))


def test_cifar10_reads_the_python_batches(tmp_path, monkeypatch):
    import gan.builtin_datasets

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        d = {b"data": np.full((2, 3072), i, np.uint8), b"labels": [i, i + 1]}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(d))
    # The loader reads a batch only when its MD5 is the official one: stand these files in.
    monkeypatch.setattr(gan.builtin_datasets, "CIFAR10_MD5", {f.name: md5_of(f) for f in sorted(root.iterdir())})
    data = load_dataset("cifar10", tmp_path)
    assert data.images.shape == (10, 3, 32, 32)
    assert data.images[0].unique().tolist() == [1] and data.labels[:2].tolist() == [1, 2]


def test_svhn_reads_the_mat_file_and_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    (tmp_path / "SVHN").mkdir()
    x = np.zeros((32, 32, 3, 4), np.uint8)
    x[:, :, 0, 1] = 200  # image 1, red channel
    savemat(tmp_path / "SVHN" / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3]])})
    data = load_dataset("svhn", tmp_path)
    assert data.images.shape == (4, 3, 32, 32)
    assert data.images[1, 0].float().mean() == 200 and data.images[1, 1].max() == 0
    assert data.labels.tolist() == [0, 1, 2, 3]


def test_missing_dataset_offline_says_where_to_put_files(tmp_path, monkeypatch):
    # The only thing faked is the internet: torchvision's downloader fails as it would offline.
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvu, "urlretrieve", offline, raising=False)
    monkeypatch.setattr(tvu, "_urlretrieve", offline, raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "could not be downloaded" in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "\n" not in msg


# A folder is prepared once into the data dir (tests/test_prepared.py: the format, reuse,
# bad files); here, what training gets from it.
def test_image_folder_is_resized_to_the_model_size(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 20), (255, 0, 0)).save(photos / "a.png")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(photos / "sub" / "b.jpg")
    data = load_dataset(f"folder:{photos}", tmp_path / "data", image_size=16)
    assert data.images.shape == (2, 3, 16, 16) and data.labels is None
    assert data.images[0, 0].float().mean() > 250 and data.images[0, 2].float().mean() < 5


def test_grayscale_folder_stays_one_channel_and_defaults_to_32(tmp_path):
    from PIL import Image

    (tmp_path / "gray").mkdir()
    Image.new("L", (28, 28), 128).save(tmp_path / "gray" / "g.png")
    assert load_dataset(f"folder:{tmp_path / 'gray'}", tmp_path / "data").images.shape == (1, 1, 32, 32)


def test_empty_or_non_image_folders_are_clear_errors(tmp_path):
    photos, data_dir = tmp_path / "photos", tmp_path / "data"
    photos.mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(f"folder:{photos}", data_dir)
    (photos / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="is not a readable image"):
        load_dataset(f"folder:{photos}", data_dir)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{photos / 'nope'}", data_dir)
    assert not data_dir.exists()


def test_normalisation_round_trips():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert to_unit_range(x).min() == -1 and to_unit_range(x).max() == 1
    assert torch.equal(to_uint8(to_unit_range(x)), x)


def test_two_ranks_together_see_exactly_the_global_batches_of_one():
    one = list(rank_batch_indices(100, 16, seed=3, epoch=2))
    r0 = list(rank_batch_indices(100, 16, seed=3, epoch=2, rank=0, world_size=2))
    r1 = list(rank_batch_indices(100, 16, seed=3, epoch=2, rank=1, world_size=2))
    assert len(one) == 6  # 100 // 16, the partial batch is dropped
    for a, b, c in zip(one, r0, r1, strict=True):
        assert torch.equal(a, torch.cat([b, c]))
    assert not torch.equal(one[0], next(rank_batch_indices(100, 16, seed=3, epoch=3)))
