"""What a generator produces for a caller: the read-only eval view every consumer uses
(sample grids, scoring), sample grids from fixed latents and the progress GIF."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gan.data import to_uint8

GRID_SAMPLES = 64


class NonFiniteImages(ValueError):
    """A generator emitted NaN/inf: there is nothing to score."""

GENERATE_BATCH = 250  # images per forward pass when generating to score


def fixed_latents(latent_dim: int, seed: int, n: int = GRID_SAMPLES) -> torch.Tensor:
    """The same z for every eval of a run (and of runs with the same seed), so grids compare."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed + 7919))


@contextlib.contextmanager
def eval_view(module: nn.Module) -> Iterator[nn.Module]:
    """`module` in eval mode under no_grad, each submodule's training flag restored after.

    Eval mode is what makes sampling read-only and a function of z alone: BatchNorm then
    normalises with (and never updates) its running statistics, so what is scored is the
    function that ships (saved generators are in eval mode). No copy: parameters and
    buffers are shared, and nothing in eval mode writes them. Flags are restored per
    submodule because a caller may hold a mix (e.g. a frozen submodule in eval mode).
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, training in modes:
            m.training = training


def sample_latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The n latents (on the CPU) that a seed stands for, drawn in one call: every
    consumer (the in-loop evaluator on any number of ranks, `evaluate`, the pyfunc model)
    gets the same z for the same (n, seed), whatever batches it then runs them in."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


def generate_uint8(generator: nn.Module, z: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """G(z) as uint8 on the CPU, in fixed batches of GENERATE_BATCH: scoring in the loop
    and re-scoring a saved model run the same batches, so the same numbers. The caller
    holds G in its eval view (an exported model is frozen in eval mode already)."""
    out = []
    with torch.no_grad():
        for part in z.split(GENERATE_BATCH):
            x = generator(part.to(device))
            if not bool(torch.isfinite(x).all()):
                # uint8 would turn NaN into plausible-looking pixels: refuse to score them
                raise NonFiniteImages("the generator's images are not finite (NaN or inf)")
            out.append(to_uint8(x).cpu())
    return torch.cat(out)


def generate(generator: nn.Module, z: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """G(z) in eval mode (see eval_view) as uint8 [N, C, H, W] on the CPU."""
    with eval_view(generator):
        return torch.cat([to_uint8(generator(part)).cpu() for part in z.split(batch)])


def image_grid(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 HxWx3 (or HxW for gray) array with 2px padding."""
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    tiles = images.detach().cpu().numpy()
    n, c, h, w = tiles.shape
    cols, rows, pad = min(nrow, n), math.ceil(n / min(nrow, n)), 2 if n > 1 else 0  # one image: no border
    # torchvision's make_grid layout (a 2px black border around and between the tiles),
    # drawn here: importing torchvision costs every trial process about 1.4 s.
    grid = np.zeros((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=tiles.dtype)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, cols)
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = tile
    if c == 1:
        return grid[0]
    return np.ascontiguousarray(grid.transpose(1, 2, 0))


def save_gif(frames: Sequence[np.ndarray], path: str | Path, ms_per_frame: int = 400) -> Path:
    """Write grids as an animated GIF that loops, holding the last frame a little longer."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    images = [Image.fromarray(f) for f in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 4]
    path = Path(path)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path
