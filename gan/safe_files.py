"""Reading files that a user, or a download, can replace: their checksum, and an
unpickler that only rebuilds numpy arrays and plain containers (a planted pickle cannot
run code through it)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct")}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """pickle.Unpickler that refuses every class but numpy's array machinery."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only arrays are allowed")
        return super().find_class(module, name)


def md5_of(path: Path) -> str:
    """The file's MD5 (the checksum dataset publishers give), read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
