"""Full-state checkpoints: G, D, EMA, both optimizers, AMP scalers, RNG, epoch, step.

A checkpoint is a plain dict of tensors and primitives so it loads with
`torch.load(weights_only=True)` (no arbitrary unpickling of files from elsewhere).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (tmp file + rename) so a kill mid-write never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint, refusing pickled code."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a gan-pipelines checkpoint (format {FORMAT_VERSION})")
    return state


def checkpoint_name(epoch: int) -> str:
    """File name of the checkpoint taken after `epoch` epochs; sorts by epoch."""
    return f"epoch_{epoch:05d}.pt"
