"""`confirm --sweep`: the top trials' configs again with new seeds (real Ray, real MLflow),
and `promote --sweep` ranking configs by their mean over seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import sqlite_store
from scipy import stats

from pipelines.registry.champion_rule import Spread, decide, pooled
from pipelines.tracking import names

TINY = {"dataset": "mnist-5k", "epochs": 1, "eval_samples": 200, "latent_dim": 16, "batch_size": 128,
        "device": "cpu", "eval_budget": 0, "arch": "mlp", "mlp_width": 8,
        "lr_g": {"type": "float", "low": 1e-4, "high": 2e-3, "log": True}}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sqlite_store(tmp_path)
    return tmp_path


@pytest.mark.integration
@pytest.mark.slow  # ~150 s (a sweep, then two confirmations); fast: test_bad_input's confirm cases, the rule below
def test_confirm_trains_new_seeds_scored_where_the_trial_was_and_promote_ranks_by_their_mean(local_ray, workdir):
    from pipelines.registry.promote import promote
    from pipelines.sweep.confirm import confirm_sweep, scored_epochs
    from pipelines.sweep.driver import run_sweep
    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.report import child_runs, confirm_runs
    from pipelines.tracking.store import client_for

    # ASHA scores every trial at its rungs (epochs 1 and 2 here) and the budget admits no
    # other eval: a confirming run left to its budget would score the last epoch (3) only.
    space = Path(workdir / "tiny.yaml")
    space.write_text(yaml.safe_dump({"params": {**TINY, "epochs": 3, "eval_budget": 1e-12}}))
    swept = run_sweep(SweepOptions(space=str(space), trials=2, concurrency=2, scheduler="asha", grace_period=1,
                                   name="c", storage_path=str(workdir / "ray_results")))
    client = client_for(sqlite_store(workdir))
    first = confirm_sweep("c", top=2, seeds=1)
    out = confirm_sweep("c", top=2, seeds=1)  # again: new seeds, pooled with the first ones
    trials = child_runs(client, swept.experiment_id, swept.parent_run_id)
    finished = [t for t in trials if t.info.status == "FINISHED"]
    again = confirm_runs(client, swept.experiment_id, swept.parent_run_id)
    assert len(trials) == 2 and len(again) == 2 * len(finished) == 2 * len(first.configs)
    for c in out.configs:
        trial = c.trial
        own = int(trial.data.params["seed"])
        assert len(c.runs) == 2 and sorted(c.seeds) == [own + 1, own + 2]  # no seed twice, none the trial's
        assert scored_epochs(client, trial.info.run_id) == "1,2,3"
        for run in c.runs:
            assert run.info.status == "FINISHED" and run.data.params["seed"] == run.data.tags[names.CONFIRM_SEED]
            assert scored_epochs(client, run.info.run_id) == "1,2,3"  # where its trial was scored
            same = {k: v for k, v in run.data.params.items() if k not in ("seed", "eval_at", names.TRIAL_ID)}
            assert same == {k: v for k, v in trial.data.params.items() if k not in ("seed", "eval_at", names.TRIAL_ID)}
        values = [r.data.metrics[names.BEST_FID] for r in c.runs]  # the trial's own score is not among them
        logged = client.get_run(trial.info.run_id).data.metrics
        assert logged["confirm.best_fid_mean"] == pytest.approx(statistics.fmean(values))
        assert logged["confirm.best_fid_std"] == pytest.approx(statistics.stdev(values))
        assert logged["confirm.n"] == 2
    assert [c.mean for c in out.configs] == sorted(c.mean for c in out.configs)
    parent = client.get_run(swept.parent_run_id)
    assert parent.data.tags[names.SWEEP_CONFIRMED] == "top 2 x 1 seeds"
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "confirm/table.json", str(workdir)))
                       .read_text())
    rows = table["rows"]
    assert [r["run_id"] for r in rows] == [c.trial.info.run_id for c in out.configs]
    assert [r["selection_best_fid"] for r in rows] == [c.trial.data.metrics[names.BEST_FID] for c in out.configs]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "confirm")} >= {"confirm/mean_std.png"}

    promoted = promote(client, sweep="c")
    best = out.configs[0]
    assert promoted.spread is not None and promoted.spread.mean == pytest.approx(best.mean)
    assert promoted.spread.n == 2 and promoted.spread.pooled_df == len(out.configs)
    assert promoted.candidate.run_id in {r.info.run_id for r in [best.trial, *best.runs]}  # a model of the best config
    assert "ranked by its config's mean over 2 confirmation seeds" in promoted.line("fid")
    version = client.get_model_version(promoted.model_name, promoted.version)
    assert float(version.tags[names.VERSION_CONFIRM_MEAN]) == pytest.approx(best.mean)


def test_new_seeds_skip_the_trials_own_and_every_earlier_confirmations():
    from types import SimpleNamespace

    from pipelines.sweep.confirm import new_seeds

    trial = SimpleNamespace(data=SimpleNamespace(params={"seed": "4"}))
    first = new_seeds(trial, [], 3)
    second = new_seeds(trial, first, 3)
    assert first == [5, 6, 7] and second == [8, 9, 10]
    assert new_seeds(trial, [5, 7], 2) == [6, 8]  # a gap left by an earlier one is used


def _draws(rng, n, configs, gap=0.0):
    """Scores of `configs` configs of `n` seeds each, noise 1; the first config `gap` better
    (lower FID). The first config's Spread, with the noise pooled over all of them."""
    values = rng.normal(0.0, 1.0, (configs, n))
    values[0] -= gap
    spreads = [Spread.of(list(v)) for v in values]
    noise = pooled(spreads)
    return Spread(spreads[0].mean, spreads[0].std, n, *noise)


@pytest.mark.parametrize("held_seeds, gap, at_most, at_least", [
    (3, 0.0, 0.05, None),   # equally good, both confirmed with 3 seeds: moves in at most 5%
    (1, 0.0, 0.05, None),   # ... against a champion promoted from one run
    (6, 2.0, None, 0.80),   # 2 sigma better with 3 seeds, against a champion of 6: moves in at least 80%
], ids=["equal", "equal, champion of one run", "two sigma better"])
def test_the_champion_rule_holds_its_error_rates_over_10000_simulated_promotions(held_seeds, gap, at_most, at_least):
    # A promotion as it happens: the challenger is a config of a sweep confirmed at
    # `--top 3 --seeds 3`; the champion came from another sweep's (3 configs of `held_seeds`),
    # or from one run (its own noise unknown: the challenger's sweep's estimate stands in).
    rng = np.random.default_rng(20261208)
    moved = 0
    for _ in range(10_000):
        challenger = _draws(rng, 3, 3, gap)
        held = _draws(rng, held_seeds, 3) if held_seeds > 1 else Spread.single(float(rng.normal()))
        verdict = decide("fid", challenger, held)
        assert verdict.moves is not None
        moved += verdict.moves
    rate = moved / 10_000
    if at_most is not None:
        assert rate <= at_most
    if at_least is not None:
        assert rate >= at_least


def test_the_rule_never_takes_a_champion_of_one_seed_as_exact_and_says_when_it_cannot_decide():
    held = Spread.single(11.0)
    challenger = Spread.of([9.0], noise=(math.nan, 0))  # confirmed with one seed: no noise known anywhere
    verdict = decide("fid", challenger, held)
    assert verdict.moves is None and verdict.gain == pytest.approx(2.0)
    # promoted with one seed before the pooled estimate was kept (std 0.0 then): not exact now
    old = Spread.from_tags({names.VERSION_CONFIRM_MEAN: "11.0", names.VERSION_CONFIRM_STD: "0.0",
                            names.VERSION_CONFIRM_N: "1"})
    assert old is not None and math.isnan(old.std) and old.pooled_df == 0
    # with the noise the challenger's sweep measured, a champion of one run still has it
    measured = Spread(9.0, 0.5, 3, pooled_std=1.0, pooled_df=6)
    verdict = decide("fid", measured, held)
    assert verdict.margin > stats.t.ppf(0.96, 6) * 1.0 * math.sqrt(1 / 3)  # more than the challenger's own error
    assert verdict.margin == pytest.approx(stats.t.ppf(0.96, 6) * math.sqrt(1 / 3 + 1))
    # higher is better for precision: the same numbers read the other way
    assert decide("precision", Spread(0.9, 0.1, 3, 0.1, 6), Spread(0.5, 0.1, 3, 0.1, 6)).moves
    assert not decide("fid", Spread(0.9, 0.1, 3, 0.1, 6), Spread(0.5, 0.1, 3, 0.1, 6)).moves
