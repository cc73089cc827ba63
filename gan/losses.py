"""GAN losses by name. Each entry is (d_loss(real_logits, fake_logits, smoothing), g_loss(fake_logits)).

- bce: the non-saturating loss of Goodfellow et al. with logits, and one-sided label
  smoothing (Salimans et al. 2016): D's real target is 1 - s, the fake target stays 0.
- hinge: the SN-GAN / BigGAN hinge loss; smoothing does not apply to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def bce_d_loss(real_logits: Tensor, fake_logits: Tensor, smoothing: float = 0.0) -> Tensor:
    """BCE(D(x), 1 - s) + BCE(D(G(z)), 0)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1.0 - smoothing))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def bce_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating G loss: BCE(D(G(z)), 1) = -log sigmoid(D(G(z)))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor, smoothing: float = 0.0) -> Tensor:
    """mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """-mean(D(G(z)))."""
    return -fake_logits.mean()


LOSSES: dict[str, tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]] = {
    "bce": (bce_d_loss, bce_g_loss),
    "hinge": (hinge_d_loss, hinge_g_loss),
}
