"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, over subsets."""

from __future__ import annotations

import torch

# Up to this many rows per set, the n x n kernel matrices are computed once (float64,
# 72 MB each at 3000) and every subset is read off them; above, each subset computes its own.
PRECOMPUTE_MAX_ROWS = 3000


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2(within_x: torch.Tensor, within_y: torch.Tensor, cross: torch.Tensor, m: int) -> torch.Tensor:
    """Unbiased MMD^2 from kernel sums: within-set sums exclude the i == j terms."""
    return (within_x + within_y) / (m * (m - 1)) - 2 * cross / (m * m)


def _subset_sums(k: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Sum of k[a, b] over each subset pair, with 0/1 membership rows wa [S, n_a], wb [S, n_b]."""
    return ((wa @ k) * wb).sum(dim=1)


def _membership(n: int, m: int, num_subsets: int, g: torch.Generator) -> torch.Tensor:
    """[num_subsets, n] float64 rows with m ones each: subsets drawn without replacement."""
    w = torch.zeros(num_subsets, n, dtype=torch.float64)
    for row in w:
        row[torch.randperm(n, generator=g)[:m]] = 1.0
    return w


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of unbiased MMD^2 over random subsets of real and fake features.

    The subset size is min(subset_size, n // 2) for n = the smaller set: with subsets
    as large as the set, every subset is the whole set and the std is a meaningless 0.
    Same-distribution sets give a mean near 0, slightly negative at times (unbiased).
    """
    m = min(subset_size, max(2, min(len(real), len(fake)) // 2))
    g = torch.Generator().manual_seed(seed)
    real, fake = real.double(), fake.double()
    wf = _membership(len(fake), m, num_subsets, g)
    wr = _membership(len(real), m, num_subsets, g)
    if max(len(real), len(fake)) <= PRECOMPUTE_MAX_ROWS:
        # every subset's kernel sum is a bilinear form of one precomputed matrix
        k_ff, k_rr = polynomial_kernel(fake, fake), polynomial_kernel(real, real)
        within_f = _subset_sums(k_ff, wf, wf) - wf @ k_ff.diagonal()
        within_r = _subset_sums(k_rr, wr, wr) - wr @ k_rr.diagonal()
        cross = _subset_sums(polynomial_kernel(fake, real), wf, wr)
        values = _mmd2(within_f, within_r, cross, m)
    else:
        rows = []
        for a, b in zip(wf.bool(), wr.bool(), strict=True):
            x, y = fake[a], real[b]
            kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
            within_x, within_y = kxx.sum() - kxx.diagonal().sum(), kyy.sum() - kyy.diagonal().sum()
            rows.append(_mmd2(within_x, within_y, polynomial_kernel(x, y).sum(), m))
        values = torch.stack(rows)
    return float(values.mean()), float(values.std()) if num_subsets > 1 else 0.0
