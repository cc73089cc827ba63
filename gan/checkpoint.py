"""Full-state checkpoints: G, D, EMA, both optimizers, AMP scalers, RNG, epoch, step.

A checkpoint is a plain dict of tensors and primitives so it loads with
`torch.load(weights_only=True)` (no arbitrary unpickling of files from elsewhere).
training_state builds it from a running loop; load_weights puts its networks, optimizers
and scalers back (a resume, or a fine-tune of another run's checkpoint).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan import distributed as dist
from gan.config import RunConfig
from gan.precision import Precision

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


def training_state(
    cfg: RunConfig, G: nn.Module, D: nn.Module, G_ema: nn.Module | None,  # noqa: N803
    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, prec: Precision,
    noise: torch.Generator, epoch: int, step: int, best: dict[str, float],
) -> dict[str, Any]:
    """Everything needed to continue exactly where this epoch ended (what save_checkpoint writes)."""
    return {
        "format": FORMAT_VERSION,
        "epoch": epoch,
        "step": step,
        "config": cfg.to_dict(),
        "G": dist.unwrap(G).state_dict(),
        "D": dist.unwrap(D).state_dict(),
        "G_ema": G_ema.state_dict() if G_ema is not None else {},
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "scalers": prec.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "noise": noise.get_state()},
        "best": dict(best),
    }


def load_weights(
    state: dict[str, Any], cfg: RunConfig, G: nn.Module, D: nn.Module, G_ema: nn.Module | None,  # noqa: N803
    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, prec: Precision,
) -> None:
    """A checkpoint's networks, optimizer moments and AMP scalers into this run's. The
    learning rates and betas stay this config's: a fine-tune may change them (a resume's
    config is its checkpoint's own, so they are the same there)."""
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    if G_ema is not None:  # a checkpoint without an EMA (ema=0) starts this run's EMA at its G
        G_ema.load_state_dict(state.get("G_ema") or state["G"])
    for opt, key, lr in ((opt_g, "opt_g", cfg.lr_g), (opt_d, "opt_d", cfg.lr_d)):
        opt.load_state_dict(state[key])
        for group in opt.param_groups:
            group["lr"], group["betas"] = lr, (cfg.beta1, cfg.beta2)
    prec.load_state_dict(state.get("scalers", {}))
