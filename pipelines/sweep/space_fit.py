"""Is a trial logged by one sweep a point of another sweep's search space? A seed for a
searcher (seeding.py) must be: its logged params typed and inside the new space's ranges,
a valid config there, what it searched but the new space fixes fixed at the same value,
and scored on the same scale.
"""

from __future__ import annotations

from typing import Any

from gan.config import ConfigError
from pipelines.sweep.space import Param, SearchSpace
from pipelines.tracking.models import COMPARABLE


def _typed(p: Param, text: str) -> Any:
    """A logged param (MLflow keeps strings) as the parameter's kind, None if it is not one."""
    try:
        if p.kind == "float":
            return float(text)
        if p.kind == "int":
            return int(text)
    except ValueError:
        return None
    return next((c for c in p.choices if str(c) == text), None)


def _inside(p: Param, value: Any) -> bool:
    if p.kind == "categorical":
        return True  # _typed found it among the choices
    low, high = p.low, p.high
    assert low is not None and high is not None
    if not low <= value <= high:
        return False
    return p.kind != "int" or (value - low) % (p.step or 1) == 0


def allowed(p: Param) -> str:
    """What the space allows for `p`, as a message says it."""
    if p.kind == "categorical":
        return "one of " + ", ".join(str(c) for c in p.choices)
    step = f" step {p.step}" if p.step and p.step > 1 else ""
    return f"{p.kind} in [{p.low:g}, {p.high:g}]{step}"


def fit(run: Any, source: SearchSpace, space: SearchSpace) -> tuple[dict[str, Any], str | None]:
    """(the run's values of `space`'s active parameters, None) when the run is a point of
    `space`, else ({}, what does not fit). `source` is the space the run was sampled from."""
    from pipelines.sweep.report import sampled_params

    logged = run.data.params
    values: dict[str, Any] = {}
    for p in space.params:
        if not p.active(values):
            continue
        if p.name not in logged:
            return {}, f"has no {p.name}, which this space searches ({allowed(p)})"
        value = _typed(p, logged[p.name])
        if value is None or not _inside(p, value):
            return {}, f"{p.name}={logged[p.name]} is outside this space ({p.name}: {allowed(p)})"
        values[p.name] = value
    try:
        cfg = space.config(values).to_dict()
    except ConfigError as e:
        return {}, f"makes no valid config in this space ({e})"
    searched_here = {p.name for p in space.params}
    # A value the earlier sweep searched but this space fixes: its score holds here only
    # if this space fixes it at the same value.
    for name in sampled_params(run, source):
        if name not in searched_here and logged[name] != str(cfg[name]):
            return {}, f"{name}={logged[name]} was searched, this space does not search {name} (fixed at {cfg[name]})"
    # what a score means: a trial measured with another dataset, size, backbone or sample
    # count has an FID on another scale, whatever its parameters (promote compares the same)
    for name in COMPARABLE:
        if name in logged and logged[name] != str(cfg[name]):
            return {}, f"was scored with {name}={logged[name]}, this sweep scores with {name}={cfg[name]}"
    return values, None
