"""Evaluation under DDP: split the sample count over ranks and gather features once."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_share(total: int, rank: int, world_size: int) -> int:
    """This rank's part of `total`: shares differ by at most one and sum to `total`."""
    return total // world_size + (1 if rank < total % world_size else 0)


def any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any (a collective: all ranks must call)."""
    if world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def trim_padding(padded: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
    """Concatenate each rank's rows without its padding rows (no duplicate samples)."""
    return torch.cat([t[:c] for t, c in zip(padded, counts, strict=True)])


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of x, in rank order, on every rank (all_gather needs equal shapes)."""
    world_size = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return trim_padding(parts, sizes)
