"""Short, distinctive trial names for the runs table: the trial's number and the sampled
values that tell it apart from its siblings, e.g. `t07 dcgan lr_g=3e-4 hinge`.

A trial is named with all its sampled values when it starts (the others are not known
yet; its number is one more than the trials already started, so two concurrent starts
may share one); the sweep's report renames every trial, numbered in start order, to the
values that differ across them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SHORT = {"batch_size": "bs", "label_smoothing": "ls", "spectral_norm": "sn", "mlp_width": "w",
         "dcgan_width": "w", "beta1": "b1", "beta2": "b2", "n_dis": "n_dis"}


def number(v: float) -> str:
    """3e-4, 0.5, 0.999, 128: short and exact enough to tell trials apart."""
    if v == 0 or 1e-2 <= abs(v) < 1e4:
        return f"{v:.3g}"
    mantissa, exp = f"{v:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def part(name: str, value: Any) -> str:
    """One value as it reads in a name: a choice by itself (dcgan, hinge), a flag by its
    short name, a number as short=value."""
    if isinstance(value, bool):
        return SHORT.get(name, name) if value else f"no-{SHORT.get(name, name)}"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{SHORT.get(name, name)}={number(value)}"
    return f"{SHORT.get(name, name)}={value}"


def trial_name(number: int, values: dict[str, Any], keep: Iterable[str] | None = None) -> str:
    """`tNN` and the parts of `values` (only those named in `keep`, when given)."""
    kept = set(values) if keep is None else set(keep)
    return " ".join([f"t{number:02d}", *(part(k, v) for k, v in values.items() if k in kept)])


def differing(all_values: list[dict[str, Any]]) -> list[str]:
    """The parameters whose shown value is not the same in every trial (present in some
    trials only counts as differing), in first-seen order."""
    order: list[str] = []
    for values in all_values:
        order += [k for k in values if k not in order]
    shown = [{k: part(k, v) for k, v in values.items()} for values in all_values]
    return [k for k in order if len({s.get(k) for s in shown}) > 1]
