"""`confirm --sweep`: the top trials' configs again with new seeds (real Ray, real MLflow),
and `promote --sweep` ranking configs by their mean over seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import sqlite_store

from pipelines.registry.promote import Spread, beats
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
@pytest.mark.slow  # ~100 s (a sweep, then its confirmation); fast: test_bad_input's confirm cases, the rule below
def test_confirm_trains_the_top_configs_with_new_seeds_and_promote_ranks_by_their_mean(local_ray, workdir):
    from pipelines.registry.promote import promote
    from pipelines.sweep.confirm import confirm_sweep
    from pipelines.sweep.driver import run_sweep
    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.report import child_runs, confirm_runs
    from pipelines.tracking.store import client_for

    space = Path(workdir / "tiny.yaml")
    space.write_text(yaml.safe_dump({"params": TINY}))
    swept = run_sweep(SweepOptions(space=str(space), trials=2, concurrency=2, scheduler="none", name="c",
                                   storage_path=str(workdir / "ray_results")))
    out = confirm_sweep("c", top=2, seeds=1)
    client = client_for(sqlite_store(workdir))
    trials = child_runs(client, swept.experiment_id, swept.parent_run_id)
    again = confirm_runs(client, swept.experiment_id, swept.parent_run_id)
    assert len(trials) == 2 and len(again) == 2  # the sweep still has its 2 trials; 2 runs confirm them
    for run in again:
        trial = client.get_run(run.data.tags[names.CONFIRM_OF])
        seed = int(trial.data.params["seed"]) + 1
        assert run.info.status == "FINISHED" and run.data.tags[names.CONFIRM_SEED] == str(seed)
        assert run.data.params["seed"] == str(seed)  # the trial's config, a new seed
        same = {k: v for k, v in run.data.params.items() if k not in ("seed", names.TRIAL_ID)}
        assert same == {k: v for k, v in trial.data.params.items() if k not in ("seed", names.TRIAL_ID)}
        values = [trial.data.metrics[names.BEST_FID], run.data.metrics[names.BEST_FID]]
        logged = client.get_run(trial.info.run_id).data.metrics
        assert logged["confirm.best_fid_mean"] == pytest.approx(statistics.fmean(values))
        assert logged["confirm.best_fid_std"] == pytest.approx(statistics.stdev(values))
        assert logged["confirm.n"] == 2
    # best confirmed mean first, the parent's table says the same
    assert [c.mean for c in out.configs] == sorted(c.mean for c in out.configs)
    parent = client.get_run(swept.parent_run_id)
    assert parent.data.tags[names.SWEEP_CONFIRMED] == "top 2 x 1 seeds"
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "confirm/table.json", str(workdir)))
                       .read_text())
    assert [r["run_id"] for r in table["rows"]] == [c.trial.info.run_id for c in out.configs]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "confirm")} >= {"confirm/mean_std.png"}

    promoted = promote(client, sweep="c")
    best = out.configs[0]
    assert promoted.spread is not None and promoted.spread.mean == pytest.approx(best.mean)
    assert promoted.candidate.run_id in {r.info.run_id for r in best.runs}  # a model of the best config
    assert "ranked by the confirmed mean over 2 seeds" in promoted.line("fid")
    version = client.get_model_version(promoted.model_name, promoted.version)
    assert float(version.tags[names.VERSION_CONFIRM_MEAN]) == pytest.approx(best.mean)


def test_a_confirmed_challenger_must_beat_the_champion_by_more_than_the_pooled_standard_error():
    held = Spread.of([10.0, 12.0, 11.0])
    close = Spread.of([9.5, 11.5, 10.5])  # 0.5 better; standard errors ~0.58 each
    far = Spread.of([6.0, 7.0, 8.0])
    gain, margin = beats("fid", close, held)
    assert gain == pytest.approx(0.5) and margin == pytest.approx(math.hypot(1 / math.sqrt(3), 1 / math.sqrt(3)))
    assert gain < margin  # within the noise: the champion stays
    gain, margin = beats("fid", far, held)
    assert gain > margin
    # higher is better for precision: the same numbers read the other way
    assert beats("precision", held, far)[0] == pytest.approx(4.0)
    # a champion promoted from one seed is a mean of one, with no spread of its own
    assert Spread(11.0, 0.0, 1).stderr == 0.0
