"""Precision, recall, density and coverage of generated features (Naeem et al., 2020)."""

from __future__ import annotations

import torch

CHUNK = 1024  # rows of the distance matrix held at once


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    radii = []
    for part in x.split(CHUNK):
        d = torch.cdist(part, x)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is itself
    return torch.cat(radii)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision/density: fakes inside real k-NN balls; recall/coverage: the reverse.

    precision: share of fakes within some real sample's k-NN radius.
    recall: share of reals within some fake sample's k-NN radius.
    density: mean count of real balls holding a fake, over k (can exceed 1).
    coverage: share of reals whose ball holds at least one fake.
    """
    real, fake = real.float(), fake.float()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"prdc needs more than k={k} samples per set, got {len(real)}/{len(fake)}")
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    in_real_ball = 0  # fakes inside any real ball
    ball_hits = 0  # (fake, real ball) pairs
    real_in_fake_ball = torch.zeros(len(real), dtype=torch.bool)
    nearest_fake = torch.full((len(real),), float("inf"))
    for f, rf in zip(fake.split(CHUNK), r_fake.split(CHUNK), strict=True):
        d = torch.cdist(f, real)  # [fakes, reals]
        inside = d < r_real[None, :]
        in_real_ball += int(inside.any(dim=1).sum())
        ball_hits += int(inside.sum())
        real_in_fake_ball |= (d < rf[:, None]).any(dim=0)
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    return {
        "precision": in_real_ball / len(fake),
        "recall": float(real_in_fake_ball.float().mean()),
        "density": ball_hits / (k * len(fake)),
        "coverage": float((nearest_fake < r_real).float().mean()),
    }
