"""Frechet distance between two Gaussians, in float64 (the "FID" of two feature sets)."""

from __future__ import annotations

import torch


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix; tiny negative eigenvalues are rounding."""
    vals, vecs = torch.linalg.eigh(sigma)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), computed in float64.

    tr((S1 S2)^(1/2)) is taken as the sum of sqrt-eigenvalues of the symmetric PSD
    matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2): eigh stays real and stable
    where scipy's sqrtm of the non-symmetric product needs an eps*I fallback.
    """
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    diff = mu1 - mu2
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigvals = torch.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = eigvals.clamp_min(0).sqrt().sum()
    value = diff.dot(diff) + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return max(float(value), 0.0)  # >= 0 in exact arithmetic; clip rounding noise
