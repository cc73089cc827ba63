"""Search space files: YAML read with size and alias limits, validated into a
SearchSpace (space.py); shipped() lists the ones in search_spaces/ (installed with the
package) for `gan-pipeline spaces`.

A space file is data, not code. Its keys are RunConfig field names:

    description: one line for humans
    sweep: {trials: 8, concurrency: 2, grace_period: 1}   # defaults of the CLI flags
    params:
      epochs: 3                                          # fixed value
      lr_g: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}
      n_dis: {type: int, low: 1, high: 3}
      arch: {type: categorical, choices: [mlp, dcgan]}
      dcgan_width: {type: int, low: 8, high: 32, step: 8, when: {arch: dcgan}}
      mlp_width: {type: categorical, choices: [32, 64], when: {arch: mlp}}

`when` makes a parameter exist only under a parent's choice(s), so the sampled space
really is conditional (Optuna's define-by-run). Everything is checked before a sweep
starts; each problem is one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gan.config import FIELD_NAMES, ConfigError, RunConfig, make_config, safe_yaml
from pipelines.errors import SearchSpaceError
from pipelines.sweep.space import SPACES_DIR, Param, SearchSpace, resolve_path

KINDS = ("float", "int", "categorical")
SWEEP_KEYS = {"trials": int, "concurrency": int, "grace_period": int, "perturb_every": int}
TOP_KEYS = ("description", "sweep", "params")


def shipped() -> list[SearchSpace]:
    """The spaces that ship with the package (search_spaces/*.yaml), sorted by name (their
    file's stem, what `--space NAME` takes)."""
    return [load_space(p) for p in sorted(SPACES_DIR.glob("*.yaml"))]


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search space file (SearchSpaceError on the first problem)."""
    p = resolve_path(path)
    where = str(p)
    try:
        text = p.read_text()
    except OSError as e:
        raise SearchSpaceError(f"search space {where}: cannot be read: {e.strerror or e}") from None
    try:
        data = safe_yaml(text, f"search space {where}")
    except ConfigError as e:
        raise SearchSpaceError(str(e)) from None
    return parse_space(data, where)


def parse_space(data: Any, where: str = "<space>") -> SearchSpace:
    """Validate an already-parsed space mapping (see the module docstring)."""

    def fail(key: str, problem: str) -> SearchSpaceError:
        return SearchSpaceError(f"search space {where}: {key}: {problem}")

    if not isinstance(data, dict):
        raise fail("<top>", "must be a mapping with a 'params' mapping")
    for key in data:
        if key not in TOP_KEYS:
            raise fail(str(key), "unknown top-level key (allowed: " + ", ".join(TOP_KEYS) + ")")
    raw = data.get("params")
    if not isinstance(raw, dict) or not raw:
        raise fail("params", "must be a non-empty mapping of RunConfig field: value or distribution")
    sweep = _parse_sweep(data.get("sweep") or {}, fail)

    fixed: dict[str, Any] = {}
    params: dict[str, Param] = {}
    for key, spec in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELD_NAMES:
            raise fail(name, "unknown parameter (not a RunConfig field)")
        if isinstance(spec, dict) and "value" in spec and "type" not in spec:
            spec = spec["value"]  # {value: x} is a fixed value too
        if isinstance(spec, dict):
            params[name] = _parse_param(name, spec, fail)
        else:
            _check_value(name, spec, fail)
            fixed[name] = spec

    for p in params.values():
        for parent, allowed in p.when.items():
            if parent not in params:
                where_parent = "a fixed value" if parent in fixed else "not in this space"
                raise fail(p.name, f"conditional on {parent!r}, which is {where_parent} "
                           "(the parent must be a categorical parameter)")
            parent_p = params[parent]
            if parent_p.kind != "categorical":
                raise fail(p.name, f"conditional on {parent!r}, which is {parent_p.kind}: "
                           "only a categorical parameter can be a parent")
            for v in allowed:
                if v not in parent_p.choices:
                    raise fail(p.name, f"conditional on {parent}={v!r}, which is not one of "
                               f"its choices {list(parent_p.choices)}")
    ordered = _parents_first(params, fail)
    # Every fixed value together must be a valid config, with each parameter's lowest value.
    try:
        make_config({**fixed, **{p.name: _corner(p) for p in ordered}})
    except ConfigError as e:
        raise fail("params", f"the fixed values do not make a valid config: {e}") from None
    return SearchSpace(where, fixed, tuple(ordered), sweep, str(data.get("description") or ""))


def _parse_sweep(raw: Any, fail: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise fail("sweep", "must be a mapping of " + ", ".join(SWEEP_KEYS))
    out = {}
    for key, value in raw.items():
        if key not in SWEEP_KEYS:
            raise fail(f"sweep.{key}", "unknown sweep setting (allowed: " + ", ".join(SWEEP_KEYS) + ")")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(f"sweep.{key}", f"{value!r} must be a positive integer")
        out[key] = value
    return out


def _parse_param(name: str, spec: dict[str, Any], fail: Any) -> Param:
    kind = spec.get("type")
    if kind not in KINDS:
        raise fail(name, f"type {kind!r} is invalid: must be one of " + ", ".join(KINDS))
    allowed_keys = {"float": {"low", "high", "log"}, "int": {"low", "high", "log", "step"},
                    "categorical": {"choices"}}[kind] | {"type", "when"}
    for k in spec:
        if k not in allowed_keys:
            raise fail(name, f"{k!r} is not allowed for a {kind} parameter "
                       "(allowed: " + ", ".join(sorted(allowed_keys)) + ")")
    when = _parse_when(name, spec.get("when"), fail)
    default = getattr(RunConfig, name)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(name, "choices must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise fail(name, f"choices {choices} repeat a value")
        for c in choices:
            _check_value(name, c, fail)
        return Param(name, kind, choices=tuple(choices), when=when)

    if isinstance(default, bool) or not isinstance(default, int | float):
        raise fail(name, f"is a {type(default).__name__} field: use type categorical")
    if kind == "float" and not isinstance(default, float):
        raise fail(name, "is an integer field: use type int")
    if kind == "int" and not isinstance(default, int):
        raise fail(name, "is a float field: use type float")
    number = (int,) if kind == "int" else (int, float)
    low: Any = spec.get("low")  # checked just below
    high: Any = spec.get("high")
    log = spec.get("log", False)
    for label, v in (("low", low), ("high", high)):
        if not isinstance(v, number) or isinstance(v, bool):
            raise fail(name, f"{label}={v!r} is invalid: must be {'an integer' if kind == 'int' else 'a number'}")
        if not math.isfinite(v):
            raise fail(name, f"{label}={v!r} is invalid: must be finite")
    if not isinstance(log, bool):
        raise fail(name, f"log={log!r} is invalid: must be true or false")
    if low >= high:
        raise fail(name, f"empty range: low={low!r} must be below high={high!r}")
    if log and low <= 0:
        raise fail(name, f"low={low!r} is invalid for a log range: must be > 0")
    step = spec.get("step")
    if step is not None:
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise fail(name, f"step={step!r} is invalid: must be a positive integer")
        if log and step != 1:
            raise fail(name, "step and log cannot be combined (Optuna samples log ranges per unit)")
    # The edges must be values make_config accepts (e.g. no lr range that includes 0).
    for label, v in (("low", low), ("high", high)):
        _check_value(name, float(v) if kind == "float" else v, fail, label)
    return Param(name, kind, float(low) if kind == "float" else low,
                 float(high) if kind == "float" else high, log, step, when=when)


def _parse_when(name: str, raw: Any, fail: Any) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise fail(name, "when must be a mapping {parent: value or [values]}")
    out = {}
    for parent, v in raw.items():
        values = tuple(v) if isinstance(v, list) else (v,)
        if not values:
            raise fail(name, f"when {parent}: needs at least one value")
        out[str(parent).replace("-", "_")] = values
    return out


def _check_value(name: str, value: Any, fail: Any, label: str = "value") -> None:
    try:
        make_config({name: value})
    except ConfigError as e:
        problem = str(e).split(" is invalid: ", 1)[-1]
        raise fail(name, f"{label} {value!r} is invalid: {problem}") from None


def _corner(p: Param) -> Any:
    return p.choices[0] if p.kind == "categorical" else p.low


def _parents_first(params: dict[str, Param], fail: Any) -> list[Param]:
    """Order so a parent is sampled before its children; a cycle is an error."""
    ordered: list[Param] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(p: Param) -> None:
        if state.get(p.name) == 2:
            return
        if state.get(p.name) == 1:
            raise fail(p.name, "conditions form a cycle")
        state[p.name] = 1
        for parent in p.when:
            visit(params[parent])
        state[p.name] = 2
        ordered.append(p)

    for p in params.values():
        visit(p)
    return ordered
