"""Thin torch.distributed helpers: identity when no process group is running."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from gan.config import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """All-reduce average (in place on a copy); identity on one process."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def share_buffers(model: nn.Module, src: int = 0) -> None:
    """Every rank takes rank `src`'s buffers (BatchNorm's running statistics, in place).
    Per-worker BatchNorm updates them from each rank's own slice of the batch (DDP sends
    rank 0's before each forward, not after), and the EMA averages each rank's own: the
    ranks' copies differ. A collective: every rank calls it."""
    if not is_distributed():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src)


def wrap_ddp(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """DDP-wrap for the current process group; SyncBatchNorm first if asked."""
    if not is_distributed():
        return model
    check_sync_bn(sync_bn, device.type)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def check_sync_bn(sync_bn: bool, device_type: str) -> None:
    """torch's SyncBatchNorm.forward raises for CPU tensors: say so before any step runs."""
    if sync_bn and device_type == "cpu":
        raise ConfigError(
            "sync_bn=True is invalid on cpu: SyncBatchNorm needs GPUs (use --gpu, or drop "
            "--sync-bn for per-worker BatchNorm, or --g-norm none with --spectral-norm)"
        )
