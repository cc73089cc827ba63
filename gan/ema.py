"""The EMA copy of G that a run samples, scores and ships, with StyleGAN2-ADA's warm-up.

A fixed decay from the initial weights keeps the random init in the average for
thousands of steps (0.999**560 still weighs it 57%). As StyleGAN2-ADA's `ema_rampup`,
the EMA's half-life (in images) is instead at most EMA_RAMPUP of the images seen so
far, and reaches the half-life of the configured decay only once the run is long
enough (0.999: after ~69,000 steps): early the EMA follows G, late it averages as
`cfg.ema` says.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gan.torch_api import foreach_lerp_

# Half-life <= 1% of the images seen. StyleGAN2-ADA uses 5%, for runs of millions of
# images; in short runs, where G still improves fast, a 5% half-life lags behind G and
# scores worse than no EMA at the same step (benchmarks/RESULTS.md, section 5).
EMA_RAMPUP = 0.01


def ema_half_life(decay: float) -> float:
    """Half-life in G steps of a per-step decay: decay ** half_life == 0.5."""
    return math.log(0.5) / math.log(decay)


def ema_beta(decay: float, step: int, rampup: float = EMA_RAMPUP) -> float:
    """Weight the EMA keeps in the update that follows `step` completed G steps.

    StyleGAN2-ADA: beta = 0.5 ** (batch / min(ema_nimg, images_seen * rampup)), with
    ema_nimg the configured half-life in images. Both terms are batch * steps here, so
    the batch cancels: beta = min(decay, 0.5 ** (1 / (rampup * step))). A function of
    the step alone, so a resumed run (which restores the step) continues bit-exactly.
    The first update (step 0) has beta 0: the EMA starts as G, never as the init.
    """
    if step <= 0:
        return 0.0
    return min(decay, 0.5 ** (1.0 / (rampup * step)))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model, for parameters and floating-point buffers.

    BatchNorm's running statistics are averaged with the weights, not copied from G as
    StyleGAN2-ADA does: G's statistics describe G's latest weights, while the EMA's
    weights are an average over its window, and statistics averaged over the same window
    fit them better (measured: lower FID at every epoch of benchmarks/bench_ema.py's
    runs). Integer buffers (num_batches_tracked, a count) are copied.
    """
    foreach_lerp_(ema.parameters(), model.parameters(), 1.0 - beta)  # torch's private fused lerp
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        if b.is_floating_point():
            b_ema.lerp_(b, 1.0 - beta)
        else:
            b_ema.copy_(b)
