"""gan.train's step (same losses, fused Adam, uint8 data on the device normalised per
batch, D frozen for the G step) with the switches gan.train does not expose yet:
bf16 autocast, channels_last, torch.compile, and a CUDA graph of the whole step.
Used by benchmarks/gpu.py to measure what each would buy before it goes into the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from gan.config import RunConfig
from gan.data import ImageData, to_unit_range
from gan.losses import LOSSES
from gan.models import build_models


def step_loop(
    cfg: RunConfig, data: ImageData, steps: int, warmup: int, device: torch.device, *,
    bf16: bool = False, channels_last: bool = False, compiled: bool = False, cuda_graph: bool = False,
) -> float:
    """Images/s of `steps` training steps after `warmup` (and after capture/compilation)."""
    torch.manual_seed(cfg.seed)
    G, D = (m.to(device) for m in build_models(cfg, data.shape))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    # capturable: Adam keeps its step count on the GPU, so a replayed graph advances it
    adam = {"betas": (cfg.beta1, cfg.beta2), "fused": True, "capturable": cuda_graph}
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, **adam)
    g_net, d_net = (torch.compile(G), torch.compile(D)) if compiled else (G, D)
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    d_params = list(D.parameters())
    images = data.images.to(device)
    b = cfg.batch_size
    perm = torch.randperm(len(images), device=device)
    idx = torch.zeros(b, dtype=torch.long, device=device)  # static: a CUDA graph reads it in place

    def amp() -> torch.autocast:
        # no autocast weight cache: a captured graph must not keep casts from the capture
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)

    def step() -> None:
        real = to_unit_range(images[idx]).contiguous(memory_format=fmt)
        with amp():
            fake = g_net(torch.randn(b, cfg.latent_dim, device=device))
            d_loss = d_loss_fn(d_net(real).float(), d_net(fake.detach()).float(), cfg.label_smoothing)
        d_loss.backward()
        opt_d.step()
        for p in d_params:
            p.requires_grad_(False)
        with amp():
            g_loss = g_loss_fn(d_net(fake).float())
        g_loss.backward()
        opt_g.step()
        for p in d_params:
            p.requires_grad_(True)

    def zero() -> None:
        opt_d.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)

    def plain() -> None:
        zero()
        step()

    run: Callable[[], None] = plain
    if cuda_graph:
        # PyTorch's whole-network capture recipe: warm up on a side stream, then capture
        # one step with the grads unset, so each replay writes them afresh (no zeroing).
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                plain()
        torch.cuda.current_stream(device).wait_stream(side)
        zero()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay

    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        start = (i * b) % (len(images) - b)
        idx.copy_(perm[start : start + b])
        run()
    _sync(device)
    return steps * b / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)
