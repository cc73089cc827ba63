"""torch's private APIs that gan/ uses, each wrapped once, and check() that verifies them
against the installed torch (written against torch TESTED; pyproject.toml caps it). The
twin of pipelines/compat for torch: it lives here because gan/ imports nothing above it.

A missing or changed one raises TorchInternalsChanged, here and at the call site, never a
slower or approximate fallback that would hide it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

TESTED = "2.14"
FOREACH_LERP = "torch._foreach_lerp_"


class TorchInternalsChanged(RuntimeError):
    """A private torch API that gan/torch_api.py reads is gone or changed."""


def changed(api: str, what: str) -> TorchInternalsChanged:
    """The error for `api` that `what` (e.g. 'is gone'), naming the installed torch."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        version = torch.__version__
    return TorchInternalsChanged(f"{api} {what} in torch {version}: gan/torch_api.py reads it and was written "
                                 f"against torch {TESTED} (pyproject.toml caps it); install that version or port it")


def foreach_lerp_(ends: Iterable[torch.Tensor], targets: Iterable[torch.Tensor], weight: float) -> None:
    """ends[i] <- ends[i] + weight * (targets[i] - ends[i]), in place, for every i in one
    fused call (one kernel launch per device and dtype, not one per tensor)."""
    lerp = getattr(torch, FOREACH_LERP.rpartition(".")[2], None)
    if not callable(lerp):
        raise changed(FOREACH_LERP, "is gone")
    lerp(list(ends), list(targets), weight)


def check() -> None:
    """Verify every internal this module wraps against the installed torch;
    TorchInternalsChanged (naming the API and the version) when one is gone or changed."""
    ends, targets = [torch.zeros(3), torch.full((2,), 4.0)], [torch.ones(3), torch.zeros(2)]
    foreach_lerp_(ends, targets, 0.25)
    if not (torch.equal(ends[0], torch.full((3,), 0.25)) and torch.equal(ends[1], torch.full((2,), 3.0))):
        raise changed(FOREACH_LERP, f"no longer interpolates in place (got {[e.tolist() for e in ends]})")
