"""Short, distinctive trial names for the runs table and the console: the trial's number
and the two or three sampled values that most set it apart, e.g. `t07 dcgan hinge lr_g=3e-4`.

MLflow's runs table cuts a name after about 32 characters, so a name never passes
`MAX_NAME`; every value stays in the run's params and its description. Choices (dcgan,
hinge) come first: they say what kind of GAN a trial is, where a number needs its column;
then numbers and flags, in the space's order.

A trial is named when it starts (its siblings are not known yet; its number is one more
than the trials already started, so two concurrent starts may share one); the sweep's
report renames each trial to the values that differ across all of them. It keeps the
numbers when they are unique, so a `tNN` printed while the sweep ran (its progress lines
carry the run's name) still finds its run; otherwise it numbers the trials in start order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MAX_NAME = 32  # characters: what the runs table shows of a name
MAX_VALUES = 3  # values in a name at most: more would not be read
# The key under which a trial reports its run name to Tune, so the driver's progress lines
# say the name MLflow shows (tuning.progress_callback).
TUNE_NAME_KEY = "trial_name"

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


def ranked(names: Iterable[str], values: dict[str, Any]) -> list[str]:
    """`names` in the order a name shows them: choices first (a string names the kind of
    model or loss and reads without a key), then the rest, each group in the given order."""
    present = [k for k in names if k in values]
    return [k for k in present if isinstance(values[k], str)] + [k for k in present if not isinstance(values[k], str)]


def trial_name(number: int, values: dict[str, Any], keep: Iterable[str] | None = None) -> str:
    """`tNN` and up to MAX_VALUES parts of `values` (of those named in `keep`, when given),
    ranked by `ranked`; a part that would take the name past MAX_NAME characters is left
    out and the next one tried, so the name always fits."""
    name = f"t{number:02d}"
    shown = 0
    for key in ranked(values if keep is None else keep, values):
        candidate = f"{name} {part(key, values[key])}"
        if shown < MAX_VALUES and len(candidate) <= MAX_NAME:
            name, shown = candidate, shown + 1
    return name


def number_of(name: str | None) -> int | None:
    """The trial number a name starts with (`t07 ...` -> 7), else None."""
    match = re.match(r"t(\d+)(?: |$)", name or "")
    return int(match.group(1)) if match else None


def differing(all_values: list[dict[str, Any]]) -> list[str]:
    """The parameters whose shown value is not the same in every trial (present in some
    trials only counts as differing), in first-seen order."""
    order: list[str] = []
    for values in all_values:
        order += [k for k in values if k not in order]
    shown = [{k: part(k, v) for k, v in values.items()} for values in all_values]
    return [k for k in order if len({s.get(k) for s in shown}) > 1]
