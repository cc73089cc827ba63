"""Loss values against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from gan.losses import bce_d_loss, bce_g_loss, hinge_d_loss, hinge_g_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_d_loss_without_smoothing():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    # BCE(x, 1) = softplus(-x); BCE(x, 0) = softplus(x)
    want = (softplus(-2) + softplus(0)) / 2 + (softplus(-1) + softplus(1)) / 2
    assert bce_d_loss(real, fake).item() == pytest.approx(want, rel=1e-6)


def test_bce_d_loss_with_one_sided_smoothing_changes_only_the_real_target():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    s = 0.1
    # BCE(x, t) = -t log sig(x) - (1-t) log(1-sig(x)) = t*softplus(-x) + (1-t)*softplus(x)
    want_real = (1 - s) * softplus(-2) + s * softplus(2)
    want = want_real + softplus(-1)
    assert bce_d_loss(real, fake, s).item() == pytest.approx(want, rel=1e-6)


def test_bce_g_loss_is_non_saturating():
    fake = torch.tensor([-3.0, 0.5])
    assert bce_g_loss(fake).item() == pytest.approx((softplus(3) + softplus(-0.5)) / 2, rel=1e-6)


def test_hinge_losses():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.25])
    assert hinge_d_loss(real, fake).item() == pytest.approx((0.5 + 0.0) / 2 + (0.0 + 1.25) / 2)
    assert hinge_g_loss(fake).item() == pytest.approx(0.875)
