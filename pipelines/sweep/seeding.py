"""A sweep's trials as seeds for a new searcher, written once for both users:
`sweep --resume NAME --trials N` (a finished sweep extended: its TPE continues from every
trial its searcher knew) and `sweep --warm-start NAME` (a new sweep whose TPE starts from an
earlier sweep's trials instead of from nothing).

How the seeds reach Optuna: Ray's OptunaSearch takes `evaluated_rewards` only with a
dict space; with our define-by-run (conditional) space its add_evaluated_point raises
TypeError (ray 2.60, tune/search/optuna/optuna_search.py). It does take an Optuna
`storage` and `study_name` and loads that study (create_study(load_if_exists=True)), so
the seeds go into a study in an in-memory storage (optuna.trial.create_trial) and
OptunaSearch samples on from it. Tune pickles the searcher with its study, so an
interrupted extension resumed by Tuner.restore keeps them.

Each trial is seeded as the sweep's live searcher left it in its study, so a seeded TPE
starts where the live one was (state, value, intermediate values at Tune's
training_iteration; searcher_record.py has the Ray source for each):
- finished: COMPLETE with its last fid;
- stopped by ASHA: COMPLETE with the fid of the result ASHA stopped it at (OptunaSearch
  tells every trial Tune stops as COMPLETE with its last result), that result missing from
  its intermediate values (Tune does not hand the searcher the result its scheduler stops
  a trial at);
- crashed (Tune errored it, its retries spent; or it failed before it made a run): FAIL;
- stopped before it reported anything: PRUNED;
- diverged (its last fid NaN): RUNNING, as Optuna's tell refused the NaN.
The driver records this on each trial's run as Tune tells the searcher
(searcher_record.py). A run without that record (a sweep from before it, a driver killed
before the trial ended) is read from its own end and metrics, the n-th fid it logged as
Tune's n-th result (one report per eval): exact for a finished, pruned or crashed trial
that Tune neither retried nor stopped at its final rung. Lost trials (their driver died
before Tune recorded them) are not seeded: the restored searcher may or may not have held
them.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan.config import ConfigError
from pipelines.errors import TrackingError
from pipelines.sweep.options import METRIC, MODE
from pipelines.sweep.space import SearchSpace
from pipelines.sweep.space_fit import fit
from pipelines.tracking import names

STUDY_NAME = "seeded"
COMPLETE, PRUNED, FAIL, RUNNING = "COMPLETE", "PRUNED", "FAIL", "RUNNING"  # optuna TrialState names


@dataclass(frozen=True)
class Told:
    """A trial as the live searcher left it in its study."""

    state: str  # COMPLETE, PRUNED, FAIL or RUNNING
    value: float | None  # COMPLETE: what Tune minimised (its last fid); else None
    intermediate: dict[int, float] = field(default_factory=dict)  # Tune's training_iteration -> fid


@dataclass(frozen=True)
class Seed:
    """One trial of a sweep as the new space samples it."""

    trial: str  # its run name (t03 dcgan ...): what messages and the study's attrs say
    sweep: str
    run_id: str
    params: dict[str, Any]  # the new space's active parameters, typed
    told: Told

    @property
    def scored(self) -> bool:
        return self.told.state == COMPLETE


@dataclass(frozen=True)
class Seeds:
    """The trials of one sweep, ready to seed a searcher."""

    sweep: str
    parent_run_id: str
    trials: tuple[Seed, ...]
    left_out: int  # lost, still running, or outside the new space without a score: not seeded

    @property
    def scored(self) -> int:
        return sum(s.scored for s in self.trials)


# --------------------------------------------------------------------------- reading


def told(client: Any, run: Any) -> Told | None:
    """How the live searcher left the trial of `run`, None for a trial not to seed (see the
    module doc): the driver's record (searcher_record.py), else read from the run."""
    state = run.data.tags.get(names.SEARCHER_TOLD)
    if state is None:
        return _told_by_the_run(client, run)
    value = run.data.metrics.get(names.SEARCHER_VALUE) if state == COMPLETE else None
    reported: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run.info.run_id, names.SEARCHER_FID), key=lambda m: m.timestamp):
        reported.setdefault(m.step, m.value)  # a retried trial reports its steps again: Optuna keeps the first
    return Told(state, value, reported)


def _told_by_the_run(client: Any, run: Any) -> Told | None:
    """For a run without the driver's record: what the searcher was told, as its own
    metrics and end say it (one Tune result per logged fid, in order)."""
    from gan.health import HEALTH_PREFIX
    from pipelines.sweep.closing import DEAD_REASON, RUNLESS_REASON
    from pipelines.sweep.tune_report import PRUNED_PREFIX

    status, reason = run.info.status, run.data.tags.get(names.STOPPED_REASON, "")
    if run.data.tags.get(names.SWEEP_LOST) == "true" or status in ("RUNNING", "SCHEDULED"):
        return None
    fids = [m.value for m in sorted(client.get_metric_history(run.info.run_id, names.FID),
                                    key=lambda m: (m.step, m.timestamp))]
    reports = dict(enumerate(fids, 1))
    last = run.data.metrics.get(METRIC)
    crashed = status == "FAILED" and not reason.startswith(HEALTH_PREFIX)
    if crashed or reason.startswith((RUNLESS_REASON, DEAD_REASON)):
        return Told(FAIL, None, reports)  # Tune errored it
    if status == "FAILED":  # diverged: its last report's fid was NaN
        return Told(RUNNING, None, reports)
    if last is None or not math.isfinite(last):
        return None
    if status == "KILLED" and reason.startswith(PRUNED_PREFIX):
        return Told(COMPLETE, float(last), dict(enumerate(fids[:-1], 1)))  # the last one ASHA stopped it at
    if status == "FINISHED":
        return Told(COMPLETE, float(last), reports)
    return None


def seeds_of(client: Any, parent: Any, source: SearchSpace, space: SearchSpace, flag: str) -> Seeds:
    """The trials of the sweep whose parent run is `parent`, as points of `space`
    (ConfigError, one line naming a trial and parameter, when any scored trial is not; an
    unscored one outside it is left out, as it tells TPE nothing about this space)."""
    from pipelines.sweep.report import child_runs

    sweep = parent.data.tags.get(names.SWEEP_NAME, parent.info.run_name)
    # In start order, the order the live searcher asked for them.
    runs = sorted(child_runs(client, parent.info.experiment_id, parent.info.run_id),
                  key=lambda r: (r.info.start_time, r.info.run_id))
    seeds: list[Seed] = []
    misfits: list[str] = []
    for run in runs:
        ended = told(client, run)
        if ended is None:
            continue
        values, problem = fit(run, source, space)
        if problem and ended.state == COMPLETE:
            misfits.append(f"trial {run.info.run_name}: {problem}")
        if not problem:
            seeds.append(Seed(run.info.run_name, sweep, run.info.run_id, values, ended))
    if misfits:
        scored = len(misfits) + sum(s.scored for s in seeds)
        others = f" ({len(misfits) - 1} more)" if len(misfits) > 1 else ""
        raise ConfigError(f"{flag} {sweep}: {len(misfits)} of {scored} scored trials do not "
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
    if not seeds.scored:
        total = len(seeds.trials) + seeds.left_out
        raise TrackingError(f"--warm-start {name}: sweep {name} has no scored trials ({total} trials, "
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
    """An in-memory Optuna storage holding study STUDY_NAME with the seeds as the live
    searcher left them (distributions from `space`: the ones the searcher will suggest
    from, which Optuna requires to match), for OptunaSearch(storage=..., study_name=STUDY_NAME)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME,
                                direction="minimize" if MODE == "min" else "maximize")
    dists = space.distributions()
    for s in seeds.trials:
        attrs = {"mlflow_run_id": s.run_id, "trial": s.trial, "sweep": s.sweep}
        study.add_trial(create_trial(state=TrialState[s.told.state], value=_study_value(s.told),
                                     params=s.params, distributions={k: dists[k] for k in s.params},
                                     user_attrs=attrs, intermediate_values=dict(s.told.intermediate)))
    return storage


def _study_value(t: Told) -> float | None:
    """The trial's value as the study holds it: for a PRUNED trial Optuna's tell keeps its
    last intermediate value when that is a number (optuna/study/_tell.py)."""
    if t.state != PRUNED or not t.intermediate:
        return t.value
    last = t.intermediate[max(t.intermediate)]
    return None if math.isnan(last) else last


def record_warm_start(client: Any, parent_run_id: str, seeds: Seeds) -> None:
    """The new sweep's parent says what seeded it (its description says it too: notes.py)."""
    client.set_tag(parent_run_id, names.SWEEP_SEEDED_FROM, seeds.sweep)
    client.set_tag(parent_run_id, names.SWEEP_SEEDED_FROM_RUN, seeds.parent_run_id)
    client.set_tag(parent_run_id, names.SWEEP_SEEDED_TRIALS, str(seeds.scored))
