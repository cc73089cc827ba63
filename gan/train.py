"""The one training loop. Every mode calls `train`: a local run in-process, each Ray
Train worker (DDP over a torch.distributed group it finds running), a Tune trial.

Where the numbers go is the caller's business: the loop hands per-step losses (in
batches), eval results with the fixed-latent sample grid, and full-state checkpoints
to a `Callbacks` object. It calls every method on every rank (so a callback can be a
barrier such as ray.train.report); only rank 0's values are meant to be logged, and
the loop has already averaged the losses across ranks.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from gan import distributed as dist
from gan.callbacks import Callbacks, Diverged, StopTraining
from gan.checkpoint import load_weights, training_state
from gan.config import ConfigError, RunConfig
from gan.data import Dataset, ImageData, rank_batch_indices, to_unit_range
from gan.ema import ema_beta, ema_update
from gan.eval_budget import EvalBudget
from gan.health import HEALTH_PREFIX, HealthGuard
from gan.losses import LOSSES
from gan.metrics.distributed import any_rank
from gan.models import build_models
from gan.precision import Precision, amp_dtype
from gan.sampling import NonFiniteImages, fixed_latents, generate, image_grid
from gan.step_metrics import StepMetrics

LOWER_IS_BETTER = ("fid", "kid")

Evaluator = Callable[[nn.Module, int], dict[str, float]]


@runtime_checkable
class DrawsCopies(Protocol):
    """An evaluator that also draws the copy check (gan.metrics.Evaluator does)."""

    def copy_panel(self, generator: nn.Module, latent_dim: int) -> np.ndarray: ...


@dataclass
class TrainResult:
    epochs_done: int
    step: int
    generator: nn.Module  # the sampling generator (EMA copy if enabled), unwrapped, on CPU
    eval_history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    stopped: str | None = None
    diverged: bool = False  # stopped by the health guard: a failure, not a score
    seconds: dict[str, Any] = field(default_factory=dict)  # training vs scoring time (gan.eval_budget)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; an explicit cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is invalid here: no CUDA GPU is visible (use cpu or auto)")
    return torch.device(name)


def check_batch(cfg: RunConfig, n_images: int, world_size: int = 1) -> None:
    """The batch must fit the dataset and split evenly over the ranks."""
    if cfg.batch_size * cfg.n_dis > n_images:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is invalid: with n_dis={cfg.n_dis} one step needs "
            f"{cfg.batch_size * cfg.n_dis} images but the dataset has {n_images}"
        )
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is invalid for {world_size} workers: must be a multiple of it"
        )


def steps_per_epoch(cfg: RunConfig, n_images: int) -> int:
    """G steps in one pass over the data (each takes n_dis batches)."""
    return (n_images // cfg.batch_size) // cfg.n_dis


def train(
    cfg: RunConfig,
    data: Dataset,
    callbacks: Callbacks | None = None,
    *,
    evaluator: Evaluator | None = None,
    resume: dict[str, Any] | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    warm: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a GAN on `data` as `cfg` says; resume from a checkpoint dict if given. `warm`
    (a fine-tune): another run's checkpoint whose G, D, EMA, optimizer and scaler states
    this run starts from, on its own clock (epoch and step 0), seed and budget."""
    cb = callbacks or Callbacks()
    if cfg.health_guard:  # every mode gets the same guard: local, each Ray Train rank, a trial
        cb = HealthGuard.from_config(cfg, cb)
    device = device or resolve_device(cfg.device)
    rank, world = dist.rank(), dist.world_size()
    check_batch(cfg, len(data), world)

    # ---- models, optimisers, precision: identical init on every rank (same seed)
    torch.manual_seed(cfg.seed)
    G: nn.Module
    D: nn.Module
    G, D = (m.to(device) for m in build_models(cfg, data.shape))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema > 0 else None
    # Fused Adam: one kernel for all parameters; 2.5-5x faster steps than foreach on CPU here.
    fused = device.type in ("cpu", "cuda")
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), fused=fused)
    prec = Precision(device, amp_dtype(device, cfg.amp))
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    start_epoch, step = 0, 0
    best: dict[str, float] = {}
    budget = EvalBudget(cfg.eval_budget, (resume or {}).get("eval_budget"))
    weights = resume if resume is not None else warm  # a resume's own state wins over a warm start
    if weights is not None:
        load_weights(weights, cfg, G, D, G_ema, opt_g, opt_d, prec)
    if resume is not None:  # the clock, the RNG and the best scores continue too
        noise.set_state(resume["rng"]["noise"])
        torch.set_rng_state(resume["rng"]["torch"])
        start_epoch, step = int(resume["epoch"]), int(resume["step"])
        best = dict(resume.get("best", {}))
    G, D = dist.wrap_ddp(G, device, cfg.sync_bn), dist.wrap_ddp(D, device, cfg.sync_bn)
    d_params = list(D.parameters())

    # In memory: uint8 on the device, indexed there. Streamed: each step reads its rank's
    # slice of the global batch from the prepared shards (gan/streamed.py); the same
    # images in the same order either way.
    images = data.images.to(device) if isinstance(data, ImageData) else None
    index_device = device if images is not None else torch.device("cpu")

    def batch_of(idx: torch.Tensor) -> torch.Tensor:
        if images is not None:
            return to_unit_range(images[idx])
        return to_unit_range(data.take(idx).to(device, non_blocking=True))

    z_fixed = fixed_latents(cfg.latent_dim, cfg.seed).to(device)
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    per_rank = cfg.batch_size // world
    iters = steps_per_epoch(cfg, len(data))
    metrics = StepMetrics()
    history: list[tuple[int, dict[str, float]]] = []

    def sample_z() -> torch.Tensor:
        # Draw the whole global batch on every rank and keep this rank's slice, so N
        # workers see exactly the latents one worker at the same global batch sees.
        z = torch.randn(cfg.batch_size, cfg.latent_dim, device=device, generator=noise)
        return z[rank * per_rank : (rank + 1) * per_rank]

    bar = tqdm(
        total=cfg.epochs * iters, initial=step, disable=not progress or rank != 0,
        unit="step", dynamic_ncols=True, desc="train",
    )
    stopped: str | None = None
    diverged = False
    epochs_done = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            G.train()
            D.train()
            epoch_started = time.perf_counter()
            batches = rank_batch_indices(len(data), cfg.batch_size, cfg.seed, epoch, rank, world, index_device)
            for _ in range(iters):
                # ---- D: n_dis steps; the last one's fakes keep their graph for the G step
                for i in range(cfg.n_dis):
                    real = batch_of(next(batches))
                    last = i == cfg.n_dis - 1
                    with prec.autocast(), torch.set_grad_enabled(last):
                        fake = G(sample_z())
                    with prec.autocast():
                        real_logits = D(real)
                        fake_logits = D(fake.detach())
                        d_loss = d_loss_fn(real_logits.float(), fake_logits.float(), cfg.label_smoothing)
                    opt_d.zero_grad(set_to_none=True)
                    prec.scaler_d.scale(d_loss).backward()
                    prec.scaler_d.step(opt_d)
                    prec.scaler_d.update()

                # ---- G: one step against the updated D; D's weights need no gradient
                for p in d_params:
                    p.requires_grad_(False)
                with prec.autocast(), (D.no_sync() if isinstance(D, DDP) else contextlib.nullcontext()):
                    g_loss = g_loss_fn(D(fake).float())
                opt_g.zero_grad(set_to_none=True)
                prec.scaler_g.scale(g_loss).backward()
                prec.scaler_g.step(opt_g)
                prec.scaler_g.update()
                for p in d_params:
                    p.requires_grad_(True)
                if G_ema is not None:  # warmed up: early it follows G (see gan.ema)
                    ema_update(G_ema, dist.unwrap(G), ema_beta(cfg.ema, step))

                step += 1
                metrics.add(
                    step, d_loss, g_loss,
                    torch.sigmoid(real_logits.detach().float()).mean(),
                    torch.sigmoid(fake_logits.detach().float()).mean(),
                )
                if len(metrics.steps) >= cfg.log_every:
                    rows = metrics.flush()
                    bar.set_postfix(d=f"{rows[-1][1]['d_loss']:.3f}", g=f"{rows[-1][1]['g_loss']:.3f}")
                    cb.on_metrics(rows)
                bar.update(1)
            cb.on_metrics(metrics.flush())
            budget.trained(time.perf_counter() - epoch_started)

            done = epochs_done = epoch + 1
            sampler = G_ema if G_ema is not None else dist.unwrap(G)
            if budget.score_now(cfg, done, cb, evaluator, sampler, world, device):
                # Each rank scores its share of the samples: all with the generator rank 0
                # checkpoints and the run ships, BatchNorm statistics included.
                dist.share_buffers(sampler)
                scoring_started = time.perf_counter()
                grid = image_grid(generate(sampler, z_fixed))
                scores = _score(evaluator, sampler, cfg, done)
                budget.scored(time.perf_counter() - scoring_started)
                fid = scores.get("fid", math.nan)
                improved = math.isfinite(fid) and fid < best.get("fid", math.inf)
                for k in LOWER_IS_BETTER:
                    if k in scores and math.isfinite(scores[k]):
                        best[k] = min(best.get(k, math.inf), scores[k])
                        scores[f"best_{k}"] = best[k]
                history.append((step, scores))
                cb.on_seconds(budget.state_dict())
                cb.on_scored(done, step, sampler, improved, done == cfg.epochs)
                if improved and rank == 0 and isinstance(evaluator, DrawsCopies):  # the new best's copy check
                    cb.on_copies(done, step, evaluator.copy_panel(sampler, cfg.latent_dim))
                cb.on_eval(done, step, grid, scores)
            elif done % cfg.eval_every == 0:  # not scored (the budget): the grid still, from z_fixed alone
                cb.on_grid(done, step, image_grid(generate(sampler, z_fixed)))
            if done % cfg.checkpoint_every == 0 or done == cfg.epochs or cb.wants_checkpoint(done):
                state = training_state(cfg, G, D, G_ema, opt_g, opt_d, prec, noise, done, step, best)
                cb.on_checkpoint(done, step, {**state, "eval_budget": budget.state_dict()})
            if done < cfg.epochs:
                _stop_if_requested(cb, world, device)
    except StopTraining as stop:
        stopped = str(stop) or "stopped"
        diverged = isinstance(stop, Diverged)
    finally:
        bar.close()

    final = G_ema if G_ema is not None else dist.unwrap(G)
    return TrainResult(
        epochs_done=epochs_done,
        step=step,
        generator=copy.deepcopy(final).cpu().eval(),
        eval_history=history,
        stopped=stopped,
        diverged=diverged,
        seconds=budget.state_dict(),
    )


def _stop_if_requested(cb: Callbacks, world: int, device: torch.device) -> None:
    """End the run after this epoch when a callback asks (on any rank; every rank stops)."""
    reason = cb.stop_requested()
    if any_rank(reason is not None, world, device):
        raise StopTraining(reason or "stopped on another rank's request")


def _score(evaluator: Evaluator | None, sampler: nn.Module, cfg: RunConfig, epoch: int) -> dict[str, float]:
    """The eval's scores; none for non-finite images (there is nothing to score), which
    under the health guard means the run diverged."""
    if evaluator is None:
        return {}
    try:
        return dict(evaluator(sampler, cfg.latent_dim))
    except NonFiniteImages:
        if cfg.health_guard:
            raise Diverged(f"{HEALTH_PREFIX}the generator's images are not finite (NaN/inf) at epoch {epoch}") from None
        return {}
