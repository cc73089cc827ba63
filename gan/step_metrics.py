"""The per-step losses of the loop: kept on the device, averaged across ranks and read back
in one transfer per flush (a sync per step would stall a GPU)."""

from __future__ import annotations

import torch

from gan import distributed as dist

STEP_METRICS = ("d_loss", "g_loss", "D_x", "D_G_z")


class StepMetrics:
    """Per-step scalars kept on the device and read back in one transfer per flush."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.rows: list[torch.Tensor] = []

    def add(self, step: int, *values: torch.Tensor) -> None:
        self.steps.append(step)
        self.rows.append(torch.stack([v.detach().float() for v in values]))

    def flush(self) -> list[tuple[int, dict[str, float]]]:
        if not self.rows:
            return []
        table = dist.mean_across_ranks(torch.stack(self.rows)).cpu().tolist()
        out = [(s, dict(zip(STEP_METRICS, r, strict=True))) for s, r in zip(self.steps, table, strict=True)]
        self.steps, self.rows = [], []
        return out
