"""A sweep goes on from its trials: `sweep --resume NAME --trials N` extends a finished
sweep under the same parent, its searcher seeded with every trial as its own searcher
had it; `sweep --warm-start NAME` seeds a new sweep's searcher with an earlier sweep's.

The first tests need no Tune run: a sweep as the store records it (tests/sweep_records.py)
seeds Ray's real OptunaSearch. One sweep run (finished, ASHA-stopped and crashed trials)
checks the seeds against the study its live OptunaSearch built, trial by trial. The rest
run real Ray Tune + Optuna + MLflow on mnist-5k with one-epoch trials: one finished
2-trial sweep, extended to 4, serves them all (module fixture); the warm start from it is
a third sweep run, in the slow suite. The one-line refusals without a sweep run are in
tests/test_bad_input.py (DOOR).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import arm_fault, sqlite_store
from sweep_records import FIXED, recorded_sweep, space_file

from pipelines.sweep.naming import number_of
from pipelines.tracking import names

pytestmark = pytest.mark.integration


@dataclass
class Swept:
    folder: Path
    storage: Path
    first: Any  # SweepOutcome of the 2-trial sweep "base"
    more: Any  # SweepOutcome of `--resume base --trials 4`
    base_state: dict[str, str]  # base's Tune folder, file -> sha256, before the extension
    client: Any


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _options(storage: Path, **kw: Any) -> Any:
    from pipelines.sweep.options import SweepOptions

    return SweepOptions(storage_path=str(storage), **kw)


# The tests on a real extended sweep share one ~45 s fixture (two sweep runs): in the slow
# suite. The fast suite holds the same guarantees without a Tune run: the two seeding tests
# below (Ray's real OptunaSearch seeded from a recorded sweep, and an extension of a
# warm-started one) and tests/test_bad_input.py's refusals of --resume/--trials/--warm-start.
SWEPT = pytest.mark.slow


@pytest.fixture(scope="module")
def swept(local_ray, classifier_cache, tmp_path_factory) -> Swept:
    from pipelines.sweep.driver import run_sweep
    from pipelines.tracking.store import client_for

    folder = tmp_path_factory.mktemp("seeding")
    storage = folder / "ray_results"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", sqlite_store(folder))
        space = space_file(folder, "tiny")
        first = run_sweep(_options(storage, space=str(space), trials=2, concurrency=1, scheduler="none",
                                   name="base"))
        before = _hashes(storage / "base")
        more = run_sweep(_options(storage, trials=4), resume="base")
        yield Swept(folder, storage, first, more, before, client_for(sqlite_store(folder)))


def test_a_sweeps_scored_trials_seed_the_searchers_study_and_it_samples_on(tmp_path):
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.seeding import Told, warm_start_seeds
    from pipelines.sweep.space_file import load_space
    from pipelines.sweep.tuning import make_searcher

    # finished 40 and 30, failed, pruned after epoch 1 at 55: runs without the driver's
    # record of what the searcher was told (a sweep from before it), read from their ends
    uri = recorded_sweep(tmp_path, "base", [(3e-4, 40.0), (1.5e-3, 30.0), (2e-4, None), (5e-4, 55.0)], pruned=1)
    path = space_file(tmp_path, "new", {"type": "float", "low": 5e-5, "high": 5e-3, "log": True})
    space = load_space(path)
    seeds = warm_start_seeds(MlflowClient(uri), "gan-pipelines", "base", space)
    # ASHA's stop is at the pruned trial's one result, which Tune tells the searcher as its
    # value only; the failed trial is FAIL, as Tune errored it
    assert [(s.params, s.told) for s in seeds.trials] == [
        ({"lr_g": 3e-4}, Told("COMPLETE", 40.0, {1: 40.0})), ({"lr_g": 1.5e-3}, Told("COMPLETE", 30.0, {1: 30.0})),
        ({"lr_g": 2e-4}, Told("FAIL", None, {})), ({"lr_g": 5e-4}, Told("COMPLETE", 55.0, {}))]
    assert seeds.left_out == 0 and seeds.scored == 3

    searcher = make_searcher(space, SweepOptions(space=str(path), trials=6).resolved(space), seeds)
    study = searcher._ot_study  # noqa: SLF001 - the study TPE samples from
    ended = [(t.state, t.value, t.intermediate_values, t.user_attrs["trial"]) for t in study.trials]
    assert ended == [(TrialState.COMPLETE, 40.0, {1: 40.0}, "t01 lr_g=0.0003"),
                     (TrialState.COMPLETE, 30.0, {1: 30.0}, "t02 lr_g=0.0015"),
                     (TrialState.FAIL, None, {}, "t03 lr_g=0.0002"),
                     (TrialState.COMPLETE, 55.0, {}, "t04 lr_g=0.0005")]
    config = searcher.suggest("next")  # the define-by-run space samples on from them
    assert 5e-5 <= config["lr_g"] <= 5e-3 and config["epochs"] == 1 and len(study.trials) == 5


def _as_optuna_has_it(trial: Any) -> tuple:
    """What a searcher's study holds of a trial (NaN spelled out: NaN != NaN)."""
    def number(v: float | None) -> float | str | None:
        return "nan" if v is not None and math.isnan(v) else v

    return (trial.state.name, number(trial.value), trial.params,
            {step: number(v) for step, v in sorted(trial.intermediate_values.items())})


@pytest.mark.parametrize(("end", "reported"), [
    ("finished", [50.0, 40.0]), ("diverged", [50.0, math.nan]), ("crashed", [50.0]), ("never ran", [])])
def test_the_record_of_each_end_is_what_rays_optuna_search_left_in_its_study(tmp_path, end, reported):
    """Ray's real OptunaSearch driven as Tune drives it at each kind of end (a Tune run
    makes some of these only slowly: a diverged trial, one stopped before it ran), and the
    seed made from what the driver records, side by side."""
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.searcher_record import told_at_end
    from pipelines.sweep.seeding import STUDY_NAME, Seed, Seeds, Told, seeded_storage
    from pipelines.sweep.space_file import load_space
    from pipelines.sweep.tuning import make_searcher

    space = load_space(space_file(tmp_path, "s"))
    live = make_searcher(space, SweepOptions(space=str(space.path), trials=2).resolved(space))
    assert isinstance(live, OptunaSearch)
    config = live.suggest("t")
    results = [{"fid": v, "training_iteration": i} for i, v in enumerate(reported, 1)]
    for r in results:
        live.on_trial_result("t", r)
    if end == "crashed":
        live.on_trial_complete("t", error=True)  # Tune's _process_trial_failure
    elif end == "never ran":
        live.on_trial_complete("t")  # Tune's stop_trial of a PENDING trial
    else:
        live.on_trial_complete("t", result=results[-1])  # stop_trial of a RUNNING one
    (trial,) = live._ot_study.trials  # noqa: SLF001 - the study TPE samples from

    state, value = told_at_end("PENDING" if end == "never ran" else "RUNNING", results[-1] if results else None,
                               errored=end == "crashed")
    told = Told(state, value, {r["training_iteration"]: r["fid"] for r in results})
    seed = Seed("t01", "s", "run", {"lr_g": config["lr_g"]}, told)
    (seeded,) = optuna.load_study(study_name=STUDY_NAME,
                                  storage=seeded_storage(Seeds("s", "p", (seed,), 0), space)).trials
    assert _as_optuna_has_it(seeded) == _as_optuna_has_it(trial)
    assert trial.state == {"finished": TrialState.COMPLETE, "diverged": TrialState.RUNNING,
                           "crashed": TrialState.FAIL, "never ran": TrialState.PRUNED}[end]


def test_a_trial_whose_process_died_seeds_as_failed_not_as_pruned(tmp_path):
    """Tune errored it (closing.py's reason starts with `tune:` too, as a pruned one's does):
    its searcher was told FAIL."""
    from mlflow import MlflowClient

    from pipelines.sweep.closing import DEAD_REASON
    from pipelines.sweep.parent import find_parent
    from pipelines.sweep.seeding import Told, seeds_of
    from pipelines.sweep.space_file import load_space

    uri = recorded_sweep(tmp_path, "base", [(3e-4, 40.0), (5e-4, 55.0)])
    client = MlflowClient(uri)
    parent = find_parent(client, client.get_experiment_by_name("gan-pipelines").experiment_id, "base")
    dead = next(r for r in client.search_runs([parent.info.experiment_id]) if r.info.run_name.startswith("t02"))
    client.set_tag(dead.info.run_id, names.STOPPED_REASON, DEAD_REASON)
    client.set_terminated(dead.info.run_id, "KILLED")
    space = load_space(Path(parent.data.tags[names.SWEEP_STORAGE]) / "space.yaml")
    seeds = seeds_of(client, parent, space, space, "--resume")
    assert [s.told for s in seeds.trials] == [Told("COMPLETE", 40.0, {1: 40.0}), Told("FAIL", None, {1: 55.0})]


def test_an_extension_of_a_warm_started_sweep_is_seeded_with_what_its_first_searcher_knew(tmp_path):
    from mlflow import MlflowClient

    from pipelines.sweep.parent import find_parent
    from pipelines.sweep.seeding import extension_seeds
    from pipelines.sweep.space_file import load_space

    uri = recorded_sweep(tmp_path, "src", [(3e-4, 40.0), (1.5e-3, 30.0)])
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gan-pipelines").experiment_id
    src = find_parent(client, exp, "src").info.run_id
    recorded_sweep(tmp_path, "warm", [(6e-4, 35.0)], tags={names.SWEEP_SEEDED_FROM: "src",
                                                          names.SWEEP_SEEDED_FROM_RUN: src})
    warm = find_parent(client, exp, "warm")
    seeds = extension_seeds(client, warm, load_space(Path(warm.data.tags[names.SWEEP_STORAGE]) / "space.yaml"))
    assert [(s.sweep, s.told.value) for s in seeds.trials] == [("src", 40.0), ("src", 30.0), ("warm", 35.0)]


def _study(tune_folder: Path) -> Any:
    """The Optuna study of the searcher Tune saved with the experiment (its real state)."""
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tune_folder))
    return searcher._ot_study  # noqa: SLF001 - what TPE sampled from, as Tune pickled it


@SWEPT
def test_an_extended_sweep_has_all_its_trials_under_one_parent_numbered_on(swept):
    first, more, client = swept.first, swept.more, swept.client
    assert more.parent_run_id == first.parent_run_id and len(first.runs) == 2 and len(more.runs) == 4
    assert all(r.data.tags[names.PARENT_RUN] == first.parent_run_id for r in more.runs)
    assert all(r.info.status == "FINISHED" for r in more.runs)
    numbers = {r.info.run_id: number_of(r.info.run_name) for r in more.runs}
    assert sorted(numbers.values()) == [1, 2, 3, 4]
    assert sorted(numbers[r.info.run_id] for r in first.runs) == [1, 2]  # the first trials keep theirs

    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[names.SWEEP_EXTENDED] == "2 -> 4"
    assert parent.data.tags[names.SWEEP_STORAGE] == str(swept.storage / "base-more-1")
    assert _hashes(swept.storage / "base") == swept.base_state  # the finished Tune state is untouched
    assert "Extended (trials 2 -> 4" in parent.data.tags[names.NOTE]


@SWEPT
def test_an_extended_sweep_recomputes_its_report_and_metrics_over_all_trials(swept):
    client, pid = swept.client, swept.first.parent_run_id
    parent = client.get_run(pid)
    finished = [r for r in swept.more.runs if math.isfinite(r.data.metrics.get("fid", math.nan))]
    best = min(finished, key=lambda r: r.data.metrics["fid"])
    assert parent.data.metrics["sweep.trials_finished"] == 4
    assert parent.data.metrics["sweep.fid"] == best.data.metrics["fid"]
    assert parent.data.tags[names.BEST_RUN_ID] == best.info.run_id
    # each extension is a step of the sweep.* metrics: before (2 trials) and after (4)
    history = {m.step: m.value for m in client.get_metric_history(pid, "sweep.trials_finished")}
    assert history == {0: 2, 1: 4}
    seconds = {m.step: m.value for m in client.get_metric_history(pid, "sweep.seconds")}
    assert seconds[1] > seconds[0]  # the extension's time is added to the sweep's
    table = pd.read_csv(client.download_artifacts(pid, "summary/summary.csv", str(swept.folder)))
    assert sorted(table["run_id"]) == sorted(r.info.run_id for r in swept.more.runs)
    assert "**Sweep base**: 4 trials" in parent.data.tags[names.NOTE]


@SWEPT
def test_an_extended_sweeps_searcher_starts_from_the_scored_trials(swept):
    from optuna.trial import TrialState

    study = _study(swept.storage / "base-more-1")
    seeded, new = study.trials[:2], study.trials[2:]
    by_run = {r.info.run_id: r for r in swept.first.runs}
    assert sorted(t.user_attrs["mlflow_run_id"] for t in seeded) == sorted(by_run)
    for t in seeded:
        run = by_run[t.user_attrs["mlflow_run_id"]]
        assert t.state == TrialState.COMPLETE and t.value == run.data.metrics["fid"]
        assert t.params == {"lr_g": float(run.data.params["lr_g"])}
    assert len(new) == 2 and all(t.state == TrialState.COMPLETE for t in new)  # the extension's own, told by Tune
    assert {t.params["lr_g"] for t in new} == {float(r.data.params["lr_g"]) for r in swept.more.runs
                                               if r.info.run_id not in by_run}


@SWEPT
def test_an_extended_sweep_is_not_extended_again_to_as_many_trials(swept, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.chdir(swept.folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(swept.folder))
    runs_before = len(swept.client.search_runs([swept.first.experiment_id]))
    for flags, says in ((["--trials", "4"], "sweep base already has 4 trials"),
                        ([], "the sweep is finished (4 trials)")):
        capsys.readouterr()
        assert main(["sweep", "--resume", "base", *flags]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert len(swept.client.search_runs([swept.first.experiment_id])) == runs_before
    assert not (swept.storage / "base-more-2").exists()


# A third sweep run (~25 s on 2 busy cores): test_a_sweeps_scored_trials_seed_the_searchers_study_and_it_samples_on
# holds the seeding of the searcher, and the extension tests above the same seeds through Tune.
@pytest.mark.slow
def test_a_warm_started_sweep_records_its_seeds_and_its_searcher_starts_from_them(swept, monkeypatch):
    from optuna.trial import TrialState

    from pipelines.sweep.driver import run_sweep

    monkeypatch.chdir(swept.folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(swept.folder))
    # a wider range than base's: every base trial is a point of it
    wider = space_file(swept.folder, "wider", {"type": "float", "low": 5e-5, "high": 5e-3, "log": True})
    out = run_sweep(_options(swept.storage, space=str(wider), trials=1, concurrency=1, scheduler="none",
                             name="warm", warm_start="base"))
    parent = swept.client.get_run(out.parent_run_id)
    tags = parent.data.tags
    assert tags[names.SWEEP_SEEDED_FROM] == "base" and tags[names.SWEEP_SEEDED_TRIALS] == "4"
    assert tags[names.SWEEP_SEEDED_FROM_RUN] == swept.first.parent_run_id
    assert parent.data.params["sweep.warm_start"] == "base"
    assert "Warm-started: its searcher began with the 4 scored trials of sweep [base]" in tags[names.NOTE]
    assert len(out.runs) == 1 and out.runs[0].data.tags[names.PARENT_RUN] == out.parent_run_id

    study = _study(swept.storage / "warm")
    seeds = {t.user_attrs["mlflow_run_id"]: t for t in study.trials if t.user_attrs.get("sweep") == "base"}
    assert sorted(seeds) == sorted(r.info.run_id for r in swept.more.runs)
    assert all(t.state == TrialState.COMPLETE for t in seeds.values())
    assert {r.info.run_id: r.data.metrics["fid"] for r in swept.more.runs} == {k: t.value for k, t in seeds.items()}


@SWEPT
def test_a_warm_start_from_trials_outside_the_space_names_one_and_creates_nothing(swept, monkeypatch):
    from pipelines.sweep.driver import run_sweep
    from pipelines.sweep.report import sampled_params

    monkeypatch.chdir(swept.folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(swept.folder))
    lowest = min(swept.first.runs, key=lambda r: float(r.data.params["lr_g"]))
    lr = sampled_params(lowest, swept.first.space)["lr_g"]
    name = next(r.info.run_name for r in swept.more.runs if r.info.run_id == lowest.info.run_id)  # as renamed
    narrow = space_file(swept.folder, "narrow", {"type": "float", "low": lr * 1.01, "high": 2e-3, "log": True})
    runs_before = len(swept.client.search_runs([swept.first.experiment_id]))
    with pytest.raises(Exception, match=rf"trial {re.escape(name)}: lr_g=\S+ is outside this space") as e:
        run_sweep(_options(swept.storage, space=str(narrow), trials=1, name="narrow", warm_start="base"))
    from gan.errors import UserError

    assert isinstance(e.value, UserError)  # one line, exit 2 at the CLI
    assert len(swept.client.search_runs([swept.first.experiment_id])) == runs_before
    assert not (swept.storage / "narrow").exists()


# One sweep run of 4 two-epoch trials (~30 s on 2 busy cores).
def test_the_seeds_of_a_sweep_are_its_live_searchers_trials_state_by_state(local_ray, classifier_cache, tmp_path,
                                                                           monkeypatch):
    """Finished, ASHA-stopped and crashed trials seed a study equal to the one Ray's
    OptunaSearch built as the sweep ran (as Tune saved it with the experiment)."""
    import optuna
    from mlflow import MlflowClient

    from pipelines.sweep import driver
    from pipelines.sweep.driver import run_sweep
    from pipelines.sweep.seeding import STUDY_NAME, seeded_storage, seeds_of
    from pipelines.sweep.space_file import load_space

    monkeypatch.chdir(tmp_path)
    uri = sqlite_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # The crash below ends its trial for good (Tune errors it): its retries would run it again.
    monkeypatch.setattr(driver, "TRIAL_RETRIES", 0)
    path = tmp_path / "two-epochs.yaml"
    # This tiny G at lr_g 1e-3 scores worse than left near its random init (1e-7) by its
    # first rung: seed 0 samples 1e-7, then 1e-3 twice (ASHA stops the first of those).
    path.write_text(yaml.safe_dump({"params": {**FIXED, "epochs": 2,
                                               "lr_g": {"type": "categorical", "choices": [1e-3, 1e-7]}}}))
    client = MlflowClient(uri)
    arm_fault(local_ray, "fail_in_run", "t04")  # the fourth trial raises at its first eval
    out = run_sweep(_options(tmp_path / "ray_results", space=str(path), trials=4, concurrency=1, scheduler="asha",
                             grace_period=1, seed=0, name="live"))

    ends = [(r.info.status, r.data.tags.get(names.STOPPED_REASON, "")) for r in out.runs]
    assert any(status == "FINISHED" for status, _ in ends), ends
    assert any(status == "KILLED" and why.startswith("tune: stopped by the scheduler") for status, why in ends), ends
    assert any(status == "FAILED" for status, _ in ends), ends

    live = _study(tmp_path / "ray_results" / "live").trials
    space = load_space(path)
    seeds = seeds_of(client, client.get_run(out.parent_run_id), space, space, "--resume")
    seeded = optuna.load_study(study_name=STUDY_NAME, storage=seeded_storage(seeds, space)).trials
    assert [_as_optuna_has_it(t) for t in seeded] == [_as_optuna_has_it(t) for t in live]
    assert {t.state.name for t in live} >= {"COMPLETE", "FAIL"}
    assert any(t.state.name == "COMPLETE" and not t.intermediate_values for t in live)  # stopped at its first result

    # A sweep recorded before the driver wrote what its searcher was told: read from the
    # runs' own ends and fids, the same study for trials Tune neither retried nor stopped
    # at their final rung.
    for r in out.runs:
        client.delete_tag(r.info.run_id, names.SEARCHER_TOLD)
    seeds = seeds_of(client, client.get_run(out.parent_run_id), space, space, "--resume")
    seeded = optuna.load_study(study_name=STUDY_NAME, storage=seeded_storage(seeds, space)).trials
    assert [_as_optuna_has_it(t) for t in seeded] == [_as_optuna_has_it(t) for t in live]
