"""Inception Score from class probabilities: exp E_x KL(p(y|x) || p(y)), over splits."""

from __future__ import annotations

import torch


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the score over `splits` parts; fewer parts when N < 100 * splits."""
    p = probs.to(torch.float64).clamp_min(1e-12)
    splits = max(1, min(splits, len(p) // 100))  # each part needs enough rows for p(y)
    scores = []
    for part in p.chunk(splits):
        p_y = part.mean(dim=0, keepdim=True)
        kl = (part * (part.log() - p_y.log())).sum(dim=1).mean()
        scores.append(kl.exp())
    t = torch.stack(scores)
    return float(t.mean()), float(t.std()) if len(scores) > 1 else 0.0
