"""A sweep's scored trials as seeds for a new searcher, written once for both users:
`sweep --resume NAME --trials N` (a finished sweep extended: its TPE continues from every
trial it scored) and `sweep --warm-start NAME` (a new sweep whose TPE starts from an
earlier sweep's scores instead of from nothing).

How the seeds reach Optuna: Ray's OptunaSearch takes `evaluated_rewards` only with a
dict space; with our define-by-run (conditional) space its add_evaluated_point raises
TypeError (ray 2.60, tune/search/optuna/optuna_search.py). It does take an Optuna
`storage` and `study_name` and loads that study (create_study(load_if_exists=True)), so
the seeds go into a study in an in-memory storage as finished trials
(optuna.trial.create_trial) and OptunaSearch samples on from it. Tune pickles the
searcher with its study, so an interrupted extension resumed by Tuner.restore keeps them.

Which trials seed, and as what (the score is Tune's: options.METRIC, the last `fid`):
- FINISHED with a finite fid: COMPLETE with that value.
- Pruned by ASHA (KILLED, stopped_reason `tune: ...`): PRUNED with its last fid as the
  intermediate value at the epoch it reached. Optuna's TPE ranks pruned trials behind
  every complete one (deeper ones first), which is what ASHA judged; as COMPLETE, a
  one-epoch FID would compete with full-budget ones as an equal.
- Failed (diverged, crashed), lost, or never scored: not seeded. They have no score
  TPE can rank, and the live searcher was told them as FAIL, which TPE ignores too.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.config import ConfigError
from pipelines.errors import TrackingError
from pipelines.sweep.options import METRIC, MODE
from pipelines.sweep.space import Param, SearchSpace
from pipelines.tracking import names

STUDY_NAME = "seeded"
# Fields that define what a score means: a trial measured with another dataset, size,
# backbone or sample count has an FID on another scale, whatever its parameters.
SCORED_BY = ("dataset", "image_size", "backbone", "eval_samples")
PRUNED_PREFIX = "tune:"  # trial.pruned_reason: ASHA stopped it


@dataclass(frozen=True)
class Seed:
    """One scored trial as the new space samples it."""

    trial: str  # its run name (t03 dcgan ...): what messages and the study's attrs say
    sweep: str
    run_id: str
    params: dict[str, Any]  # the new space's active parameters, typed
    value: float  # its last fid (what Tune minimised)
    pruned_at: int | None = None  # the epoch ASHA stopped it at; None: ran its whole budget


@dataclass(frozen=True)
class Seeds:
    """The scored trials of one sweep, ready to seed a searcher."""

    sweep: str
    parent_run_id: str
    trials: tuple[Seed, ...]
    unscored: int  # failed, lost or never scored: not seeded


# --------------------------------------------------------------------------- reading


def score(run: Any) -> tuple[float, int | None] | None:
    """(value, pruned_at) of a trial run Optuna can rank, else None (see the module doc)."""
    value = run.data.metrics.get(METRIC)
    if value is None or not math.isfinite(value):
        return None
    if run.info.status == "FINISHED":
        return float(value), None
    if run.info.status == "KILLED" and run.data.tags.get(names.STOPPED_REASON, "").startswith(PRUNED_PREFIX):
        return float(value), int(run.data.metrics.get(names.EPOCH, 0))
    return None


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
    for name in SCORED_BY:
        if name in logged and logged[name] != str(cfg[name]):
            return {}, f"was scored with {name}={logged[name]}, this sweep scores with {name}={cfg[name]}"
    return values, None


def seeds_of(client: Any, parent: Any, source: SearchSpace, space: SearchSpace, flag: str) -> Seeds:
    """The scored trials of the sweep whose parent run is `parent`, as points of `space`
    (ConfigError, one line naming a trial and parameter, when any scored trial is not)."""
    from pipelines.sweep.report import child_runs

    sweep = parent.data.tags.get(names.SWEEP_NAME, parent.info.run_name)
    runs = sorted(child_runs(client, parent.info.experiment_id, parent.info.run_id),
                  key=lambda r: (r.info.start_time, r.info.run_id))
    seeds: list[Seed] = []
    misfits: list[str] = []
    for run in runs:
        scored = score(run)
        if scored is None:
            continue
        values, problem = fit(run, source, space)
        if problem:
            misfits.append(f"trial {run.info.run_name}: {problem}")
            continue
        seeds.append(Seed(run.info.run_name, sweep, run.info.run_id, values, *scored))
    if misfits:
        others = f" ({len(misfits) - 1} more)" if len(misfits) > 1 else ""
        raise ConfigError(f"{flag} {sweep}: {len(misfits)} of {len(misfits) + len(seeds)} scored trials do not "
                          f"fit this sweep's space: {misfits[0]}{others}; seed from a sweep of this space, "
                          "or widen it")
    return Seeds(sweep, parent.info.run_id, tuple(seeds), len(runs) - len(seeds))


def sweep_space(client: Any, parent: Any) -> SearchSpace:
    """The space a sweep sampled: its Tune folder's copy, else its parent run's artifact
    (the folder may be on another machine, or gone)."""
    from pipelines.sweep.space_file import load_space

    saved = Path(parent.data.tags.get(names.SWEEP_STORAGE, "")) / "space.yaml"
    if saved.is_file():
        return load_space(saved)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(parent.info.run_id, "search_space", tmp))
        files = sorted(local.glob("*.y*ml"))
        if files:
            return load_space(files[0])
    raise TrackingError(f"sweep {parent.data.tags.get(names.SWEEP_NAME)}: its search space is gone "
                        f"(no {saved}, no search_space artifact on run {parent.info.run_id})")


def warm_start_seeds(client: Any, experiment: str, name: str, space: SearchSpace) -> Seeds:
    """`--warm-start NAME`: the scored trials of sweep NAME in `experiment`, checked against
    the new sweep's `space`. Reads only: a refusal leaves nothing behind."""
    from pipelines.sweep.parent import find_parent

    exp = client.get_experiment_by_name(experiment)
    parent = find_parent(client, exp.experiment_id, name) if exp is not None else None
    if parent is None:
        raise TrackingError(f"--warm-start {name}: no sweep named {name!r} in experiment {experiment!r} "
                            "(gan-pipeline sweep --warm-start takes an earlier sweep's --name)")
    seeds = seeds_of(client, parent, sweep_space(client, parent), space, "--warm-start")
    if not seeds.trials:
        raise TrackingError(f"--warm-start {name}: sweep {name} has no scored trials ({seeds.unscored} trials, "
                            "none finished or pruned with a finite fid): nothing to seed from")
    return seeds


def extension_seeds(client: Any, parent: Any, space: SearchSpace) -> Seeds:
    """What an extension's searcher starts from: every trial the sweep scored and, for a
    warm-started sweep, the trials it was seeded with (its first searcher knew them too).
    A seeding sweep that is gone since costs only its seeds, with a note."""
    import dataclasses
    import sys

    own = seeds_of(client, parent, space, space, "--resume")
    source_id = parent.data.tags.get(names.SWEEP_SEEDED_FROM_RUN)
    if not source_id:
        return own
    try:
        source = client.get_run(source_id)
        earlier = seeds_of(client, source, sweep_space(client, source), space, "--resume")
    except Exception as e:  # noqa: BLE001 - deleted, or its space gone: extend from its own trials
        print(f"note: the sweep that seeded this one (run {source_id}) cannot be read ({type(e).__name__}): "
              "seeding from this sweep's own trials only", file=sys.stderr)
        return own
    return dataclasses.replace(own, trials=earlier.trials + own.trials)


# --------------------------------------------------------------------------- to Optuna


def seeded_storage(seeds: Seeds, space: SearchSpace) -> Any:
    """An in-memory Optuna storage holding study STUDY_NAME with the seeds as finished
    trials (distributions from `space`: the ones the searcher will suggest from, which
    Optuna requires to match), for OptunaSearch(storage=..., study_name=STUDY_NAME)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME,
                                direction="minimize" if MODE == "min" else "maximize")
    dists = space.distributions()
    for s in seeds.trials:
        attrs = {"mlflow_run_id": s.run_id, "trial": s.trial, "sweep": s.sweep}
        ended: dict[str, Any] = ({"value": s.value} if s.pruned_at is None else
                                 {"state": TrialState.PRUNED, "intermediate_values": {s.pruned_at: s.value}})
        study.add_trial(create_trial(params=s.params, distributions={k: dists[k] for k in s.params},
                                     user_attrs=attrs, **ended))
    return storage


def record_warm_start(client: Any, parent_run_id: str, seeds: Seeds) -> None:
    """The new sweep's parent says what seeded it (its description says it too: notes.py)."""
    client.set_tag(parent_run_id, names.SWEEP_SEEDED_FROM, seeds.sweep)
    client.set_tag(parent_run_id, names.SWEEP_SEEDED_FROM_RUN, seeds.parent_run_id)
    client.set_tag(parent_run_id, names.SWEEP_SEEDED_TRIALS, str(len(seeds.trials)))
