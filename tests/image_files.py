"""Image files for the prepared-dataset tests, written with PIL, and the loader before
prepared datasets as their reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def photo(path: Path, w: int, h: int, seed: int, mode: str = "RGB") -> Path:
    """A photo-like image: smooth random shapes plus grain (JPEG sizes like a camera's)."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    coarse = Image.fromarray((rng.random((h // 40 + 2, w // 40 + 2, channels)) * 255).astype(np.uint8).squeeze())
    smooth = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC)).astype(int)
    grain = rng.integers(-12, 13, smooth.shape)
    Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)  # L or RGB by shape
    return path


def old_folder(path: Path, size: int) -> np.ndarray:
    """The loader before prepared datasets (gan/data.py:_folder until issue 34): decode every
    image whole, then centre square and bicubic resize. The reference for the new path."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.copy())
    gray = all(im.mode in ("1", "L", "I", "I;16", "F") for im in images)
    arrays = []
    for im in images:
        im = im.convert("L" if gray else "RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        arrays.append(np.asarray(im.crop(box).resize((size, size), 3)))
    stacked = np.stack(arrays)
    return stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2)


def photo_folder(tmp_path: Path) -> Path:
    """A folder of three 1200x900 JPEGs and, in a subfolder, one PNG."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for i in range(3):
        photo(folder / f"p{i}.jpg", 1200, 900, seed=i)
    photo(folder / "more" / "tall.png", 300, 420, seed=7)
    return folder


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
