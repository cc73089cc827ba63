"""Population-based training end to end (`gan-pipeline sweep --scheduler pbt`): one real
CLI sweep of 4 members (real Ray Tune PBT, real `mlflow server`) and `promote`, then what
a user checks: every member's run is one run with one step sequence through its exploits,
each exploit is recorded and really continued the donor's state, the parent shows the
family tree, the registered version names its lineage, re-evaluating the promoted member
reproduces its score, and the MLflow UI shows the exploits (headless Chromium). The pure
parts (which parameters mutate, the drawn population, the ancestry walk, a member's
restart from a checkpoint) have unit tests below; a killed and resumed PBT driver is the
slow test at the end."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import CHROMEDRIVER, CHROMIUM, missing_outside_ci, sqlite_store, wait_for
from test_ui_browser import SHOTS_ENV, _shot, _text, _wait_for

from pipelines.tracking import names

REPO = Path(__file__).resolve().parents[1]
MEMBERS, EPOCHS = 4, 3
SPACE = {"description": "a tiny population", "sweep": {"trials": MEMBERS, "perturb_every": 1}, "params": {
    "dataset": "mnist-5k", "arch": "mlp", "mlp_width": 16, "epochs": EPOCHS, "eval_every": 1, "eval_samples": 200,
    "latent_dim": 16, "device": "cpu", "eval_budget": 0,
    "lr_g": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "lr_d": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "beta1": {"type": "float", "low": 0.0, "high": 0.9},
    "batch_size": {"type": "categorical", "choices": [64, 128]},  # structural: copied on exploit
}}


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return done


# --------------------------------------------------------------------------- unit parts


def _shipped(name: str):
    from pipelines.sweep.space_file import load_space

    return load_space(name)


def test_a_population_mutates_the_optimisation_knobs_and_keeps_the_structure():
    from pipelines.sweep.population import mutable_params

    # default.yaml: ema's choices include 0 (EMA off): switching it is structural, like
    # arch, widths, loss and batch size; spectral_norm and the widths are conditional.
    assert [p.name for p in mutable_params(_shipped("default"))] == [
        "lr_g", "lr_d", "beta1", "beta2", "label_smoothing", "n_dis"]
    assert [p.name for p in mutable_params(_shipped("quick"))] == ["lr_g", "lr_d", "beta1", "label_smoothing"]


def test_the_population_is_drawn_from_the_space_seeded_and_spread():
    from pipelines.sweep.options import SweepOptions
    from pipelines.sweep.population import initial_population

    space = _shipped("default")
    opts = SweepOptions(space="default", trials=8, scheduler="pbt").resolved(space)
    first, again = initial_population(space, opts), initial_population(space, opts)
    assert first == again and len(first) == 8  # seeded: the same flags draw the same population
    other = initial_population(space, SweepOptions(space="default", trials=8, scheduler="pbt", seed=1).resolved(space))
    assert other != first
    for member in first:
        space.config(member)  # every member is a valid config: conditional parameters only where active
        assert ("mlp_width" in member) == (member["arch"] == "mlp")
    # Sobol points spread over a range: the 8 learning rates fall in at least 6 of 8 equal log-bins
    import math

    bins = {int(8 * (math.log(m["lr_g"]) - math.log(2e-5)) / (math.log(2e-3) - math.log(2e-5))) for m in first}
    assert len(bins) >= 6, sorted(m["lr_g"] for m in first)


def test_pbt_scaling_stays_in_the_space_and_pb2_values_train_as_whole_numbers():
    from pipelines.sweep.population import MEMBER, clamp, member_values

    clamped = clamp({MEMBER: {"beta1": 1.08, "lr_g": 1e-9, "arch": "mlp"}}, {"beta1": (0.0, 0.9), "lr_g": (2e-5, 2e-3)})
    assert clamped[MEMBER] == {"beta1": 0.9, "lr_g": 2e-5, "arch": "mlp"}
    assert member_values({MEMBER: {"n_dis": 2.4, "lr_g": 2.4, "epochs": 3}}) == {"n_dis": 2, "lr_g": 2.4, "epochs": 3}


def test_the_ancestry_walks_back_through_each_donor_before_the_exploit():
    from pipelines.tracking.exploits import Stretch, ancestry, describe_ancestry

    events = {  # c copied b at epoch 4, b had copied a at epoch 2 (and a copied d at 6, after)
        "c": [{"epoch": 4, "from_run_id": "b"}], "b": [{"epoch": 2, "from_run_id": "a"}],
        "a": [{"epoch": 6, "from_run_id": "d"}], "d": [],
    }
    line = ancestry(None, "c", 8, events)
    assert line == [Stretch("c", 4, 8), Stretch("b", 2, 4), Stretch("a", 0, 2)]
    assert describe_ancestry(line, str.upper) == "C (epochs 4-8) <- B (2-4) <- A (0-2)"
    assert ancestry(None, "a", 8, events) == [Stretch("a", 6, 8), Stretch("d", 0, 6)]
    assert ancestry(None, "a", 6, events) == [Stretch("a", 0, 6)]  # asked at the exploit: its weights before it


def _member_store(tmp_path: Path):
    """A real MLflow store with a member's run (`t01 x`, config lr_g 1e-4 at batch 128, its
    losses logged to step 78, best FID 50) and two others (`t02 y`, `t03 z`); and a function
    that writes a member checkpoint at epoch 2, step 156, as Tune hands one over."""
    from mlflow.entities import Metric
    from ray.tune import Checkpoint

    from gan.callbacks import SHIFT_KEY
    from gan.config import make_config
    from pipelines.sweep.member import write_checkpoint
    from pipelines.tracking.store import client_for

    client = client_for(sqlite_store(tmp_path))
    exp = client.create_experiment("members")
    me, *others = (client.create_run(exp, run_name=n).info.run_id for n in ("t01 x", "t02 y", "t03 z"))
    client.log_text(me, make_config({"lr_g": 1e-4, "batch_size": 128}).to_yaml(), names.CONFIG_FILE)
    client.log_batch(me, metrics=[Metric("d_loss", 1.0, 0, s) for s in (1, 39, 78)]
                     + [Metric("best_fid", 50.0, 0, 78)])
    state = {"format": 1, "epoch": 2, "step": 156, "best": {"fid": 30.0}, SHIFT_KEY: 0, "G": torch.zeros(1)}

    written = itertools.count()

    def checkpoint(trial_id: str, run_id: str, shift: int = 0, name: str = "t02 y", step: int = 156) -> Checkpoint:
        folder = tmp_path / f"ck-{next(written)}"
        folder.mkdir()
        write_checkpoint(folder, {**state, "step": step, SHIFT_KEY: shift},
                         {"trial_id": trial_id, "run_id": run_id, "run_name": name, "epoch": 2})
        return Checkpoint.from_directory(str(folder))

    return client, me, others, checkpoint


def test_a_member_restarts_from_its_own_checkpoint_or_records_the_exploit_of_another(tmp_path):
    from gan.callbacks import SHIFT_KEY
    from gan.config import make_config
    from pipelines.sweep.member import begin_life, record_start
    from pipelines.tracking.exploits import exploits

    client, me, (donor, _), checkpoint = _member_store(tmp_path)
    new = make_config({"lr_g": 1.2e-4, "batch_size": 64})
    assert begin_life(client, me, "trial-1", None, new).state is None  # a first life
    own = begin_life(client, me, "trial-1", checkpoint("trial-1", me, 5), new)
    assert own.exploit is None and own.shift == 5 and own.state["best"] == {"fid": 30.0}

    life = begin_life(client, me, "trial-1", checkpoint("trial-2", donor), new)
    # the donor's clock trains on; this run's logged steps go on from its own last one (78),
    # and its best scores stay its own
    assert life.shift == 78 - 156 and life.state["step"] == 156 and life.state["best"] == {"fid": 50.0}
    assert life.state[SHIFT_KEY] == life.shift  # Ray Train workers read it from the state they are handed
    assert {k: v for k, v in life.exploit.items() if not k.endswith("node") and k != "values"} == {
        "epoch": 2, "step": 78, "from_run_id": donor, "from_run_name": "t02 y", "from_trial_id": "trial-2",
        "from_step": 156}
    record_start(client, me, new, life, fresh=False)
    record_start(client, me, new, life, fresh=False)  # a resumed sweep restarting the same exploit
    rows = exploits(client, me)
    assert len(rows) == 1 and rows[0]["changes"] == "batch_size 128 -> 64; lr_g 0.0001 -> 0.00012"
    run = client.get_run(me)
    assert run.data.tags[names.PBT_EXPLOITS] == "1" and "copied t02 y" in run.data.tags[names.PBT_LAST_EXPLOIT]
    assert [(m.step, m.value) for m in client.get_metric_history(me, "pbt/lr_g")] == [(78, 1.2e-4)]
    assert "lr_g: 0.00012" in Path(client.download_artifacts(me, names.CONFIG_FILE, str(tmp_path))).read_text()
    # the same exploit once more (Tune restarted it from the same donor checkpoint with the
    # same values): its steps go where they went the first time
    again = begin_life(client, me, "trial-1", checkpoint("trial-2", donor), new)
    assert again.exploit["step"] == 78 and again.shift == 78 - 156


def _log_steps(client, run_id: str, steps) -> None:
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric("d_loss", 1.0, 0, s) for s in steps])


def test_a_round_redone_after_a_driver_restart_records_the_donor_actually_copied(tmp_path):
    """The driver was killed after the round at epoch 2 and the member had trained on from
    t02's checkpoint (steps 79-100); the resumed sweep redid the round and this member now
    copied t03, the other member of the top quarter: the record, its tags, config.yaml, the
    values and the lineage name t03; t02's exploit stays, superseded; no step twice."""
    from gan.config import make_config
    from pipelines.sweep.member import begin_life, record_start
    from pipelines.tracking.exploits import SUPERSEDED, exploit_rows, exploits, version_lineage

    client, me, (first, second), checkpoint = _member_store(tmp_path)
    copied_first = make_config({"lr_g": 1.2e-4, "batch_size": 64})
    life = begin_life(client, me, "trial-1", checkpoint("trial-2", first), copied_first)
    record_start(client, me, copied_first, life, fresh=False)
    _log_steps(client, me, range(79, 101))  # the first exploit's life, until the driver died

    copied_now = make_config({"lr_g": 0.8e-4, "batch_size": 32})
    redone = begin_life(client, me, "trial-1", checkpoint("trial-3", second, name="t03 z", step=120), copied_now)
    # it goes on after every step the run holds (the first life's steps stay what they were)
    assert redone.exploit["step"] == 100 and redone.shift == 100 - 120
    record_start(client, me, copied_now, redone, fresh=False)

    held = exploits(client, me)
    assert [(e["epoch"], e["from_run_id"], e["from_step"], e["step"]) for e in held] == [(2, second, 120, 100)]
    assert held[0]["changes"] == "batch_size 128 -> 32; lr_g 0.0001 -> 8e-05"
    rows = exploit_rows(client, me)  # the abandoned one kept, saying why
    assert [(r["from_run_id"], bool(r[SUPERSEDED])) for r in rows] == [(first, True), (second, False)]
    assert "t03 z's checkpoint" in rows[0][SUPERSEDED]
    run = client.get_run(me)
    assert run.data.tags[names.PBT_EXPLOITS] == "1"
    assert run.data.tags[names.PBT_LAST_EXPLOIT].startswith(f"epoch 2: copied t03 z (run {second})")
    config = Path(client.download_artifacts(me, names.CONFIG_FILE, str(tmp_path))).read_text()
    assert "lr_g: 8.0e-05" in config and "batch_size: 32" in config
    assert [(m.step, m.value) for m in client.get_metric_history(me, "pbt/lr_g")] == [(78, 1.2e-4), (100, 0.8e-4)]
    # a third start of the same redone exploit records nothing more
    record_start(client, me, copied_now, begin_life(client, me, "trial-1",
                                                     checkpoint("trial-3", second, name="t03 z", step=120),
                                                     copied_now), fresh=False)
    assert len(exploit_rows(client, me)) == 2

    # the weights' line of descent (promote's version description) names t03, not t02
    from types import SimpleNamespace

    model = SimpleNamespace(tags={names.MODEL_EPOCH: "3"})
    described = version_lineage(client, client.get_run(me), model)
    assert "t01 (epochs 2-3) <- t03 (0-2)" in described and "t02" not in described


def test_a_round_redone_with_nothing_trained_after_it_logs_each_step_once(tmp_path):
    """Killed right after the first exploit was recorded (no step trained after it), the
    redone round copies the same donor with other values: one row holds, the values of the
    redone one come at the first step it trains, no step of pbt/<param> twice."""
    from gan.config import make_config
    from pipelines.sweep.member import begin_life, record_start
    from pipelines.tracking.exploits import exploit_rows, exploits

    client, me, (donor, _), checkpoint = _member_store(tmp_path)
    first = make_config({"lr_g": 1.2e-4})
    record_start(client, me, first, begin_life(client, me, "trial-1", checkpoint("trial-2", donor), first), fresh=False)
    other = make_config({"lr_g": 0.8e-4})
    redone = begin_life(client, me, "trial-1", checkpoint("trial-2", donor, step=157), other)
    record_start(client, me, other, redone, fresh=False)
    assert [(e["step"], json.loads(e["values"])["lr_g"]) for e in exploits(client, me)] == [(78, 0.8e-4)]
    assert len(exploit_rows(client, me)) == 2
    assert [(m.step, m.value) for m in client.get_metric_history(me, "pbt/lr_g")] == [(78, 1.2e-4), (79, 0.8e-4)]


def test_a_member_given_back_its_own_checkpoint_after_a_restart_records_no_exploit(tmp_path):
    """Tune restarted the member from its own checkpoint at the epoch it had recorded an
    exploit at: that exploit no longer holds (superseded), its tags say so, and its steps
    go on after those the abandoned life logged."""
    from gan.config import make_config
    from pipelines.sweep.member import begin_life, record_start
    from pipelines.tracking.exploits import exploit_rows, exploits

    client, me, (donor, _), checkpoint = _member_store(tmp_path)
    copied = make_config({"lr_g": 1.2e-4})
    record_start(client, me, copied, begin_life(client, me, "trial-1", checkpoint("trial-2", donor), copied),
                 fresh=False)
    _log_steps(client, me, range(79, 90))
    own_cfg = make_config({"lr_g": 1e-4, "batch_size": 128})
    own = begin_life(client, me, "trial-1", checkpoint("trial-1", me, step=78), own_cfg)
    assert own.exploit is None and own.shift == 89 - 78 and own.state["best"] == {"fid": 30.0}
    record_start(client, me, own_cfg, own, fresh=False)
    assert exploits(client, me) == [] and len(exploit_rows(client, me)) == 1
    tags = client.get_run(me).data.tags
    assert tags[names.PBT_EXPLOITS] == "0" and names.PBT_LAST_EXPLOIT not in tags
    assert [(m.step, m.value) for m in client.get_metric_history(me, "pbt/lr_g")] == [(78, 1.2e-4), (89, 1e-4)]


def test_a_member_left_open_when_the_sweep_ends_is_closed_with_its_own_reason_not_ashas(tmp_path):
    """The driver closes the runs Tune ended without an error but their trials left open: a
    population member's says what happened to it (PBT paused it, never pruned it), an ASHA
    trial's that the scheduler stopped it."""
    from mlflow.entities import Metric

    from pipelines.sweep.closing import Ended, close_open_trials
    from pipelines.tracking.store import client_for

    client = client_for(sqlite_store(tmp_path))
    exp = client.create_experiment("closing")
    member, trial = (client.create_run(exp, run_name=n, tags={names.TRIAL_ID: t}).info.run_id
                     for n, t in (("t01 member", "m1"), ("t02 trial", "a1")))
    # the member logged epoch 2 and handed it over; Tune's last result of it was epoch 1's
    client.log_batch(member, metrics=[Metric("pbt/lr_g", 1e-4, 0, 0), Metric(names.EPOCH, 2, 0, 78)])
    client.log_batch(trial, metrics=[Metric(names.EPOCH, 2, 0, 78)])
    runs = [client.get_run(member), client.get_run(trial)]
    close_open_trials(client, runs, {"m1": Ended(False, 1), "a1": Ended(False, 2)})
    closed, pruned = client.get_run(member), client.get_run(trial)
    assert closed.info.status == pruned.info.status == "KILLED"
    reason = closed.data.tags[names.STOPPED_REASON]
    assert reason.startswith("driver: the sweep ended with this population member unfinished after epoch 2"), reason
    assert "competitive" not in reason and "scheduler" not in reason
    assert pruned.data.tags[names.STOPPED_REASON].startswith("tune: stopped by the scheduler after epoch 2")

    from pipelines.sweep.notes import ending

    said = ending("KILLED", reason, "", 2)
    assert said.startswith("Stopped after epoch 2") and "Pruned" not in said


def test_a_member_tune_stops_outside_a_pbt_pause_closes_its_run_with_the_drivers_reason(tmp_path):
    """A member's SystemExit out of its hand-over report is PBT pausing it (its run stays
    open for its next life); anywhere else Tune stopped it, which PBT never does: the
    sweep's driver did, and the member closes its run saying so."""
    from pipelines.sweep.tune_report import TuneCallbacks, member_stopped_reason
    from pipelines.tracking.runs import TrackedRun
    from pipelines.tracking.store import client_for

    client = client_for(sqlite_store(tmp_path))
    exp = client.create_experiment("members")
    to_tune = TuneCallbacks(perturb=(2,))
    statuses = []
    for handing_over in (True, False):
        run_id = client.create_run(exp, run_name="t01 m").info.run_id
        with pytest.raises(SystemExit), TrackedRun(client, run_id, fresh=True, prunable=True, pausable=True) as run:
            run.pruned_reason = lambda: member_stopped_reason(to_tune.epoch)
            run.paused_by_tune = lambda: to_tune.handing_over
            to_tune.epoch, to_tune.handing_over = 1, handing_over
            raise SystemExit(0)  # as Tune's report() raises it
        ended = client.get_run(run_id)
        statuses.append(ended.info.status)
        if not handing_over:
            reason = ended.data.tags[names.STOPPED_REASON]
            assert reason.startswith("driver: the sweep's driver stopped this population member after epoch 1")
            assert not reason.startswith("tune:")
    assert statuses == ["RUNNING", "KILLED"]


# --------------------------------------------------------------------------- one real PBT sweep


@pytest.fixture(scope="module")
def pbt_sweep(mlflow_server, tmp_path_factory):
    """`sweep --scheduler pbt` of 4 members, perturbed after epochs 1 and 2, then `promote`."""
    folder = tmp_path_factory.mktemp("pbt")
    (folder / "pbt.yaml").write_text(yaml.safe_dump(SPACE))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PYTHONPATH": str(REPO)}
    swept = _cli(["sweep", "--space", "pbt.yaml", "--scheduler", "pbt", "--name", "pbt", "--experiment", "pbt-test",
                  "--ray-storage", str(folder / "ray")], env, folder)
    promoted = _cli(["promote", "--sweep", "pbt", "--model-name", "pbt-gen"], env, folder)
    from pipelines.tracking.store import client_for

    client = client_for(mlflow_server)
    exp = client.get_experiment_by_name("pbt-test").experiment_id
    parent = client.search_runs([exp], "tags.sweep_name = 'pbt' and tags.`sweep.role` = 'parent'")[0]
    members = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return {"out": swept.stdout, "err": swept.stderr, "promoted": promoted.stdout, "client": client,
            "parent": parent, "members": members, "env": env, "folder": folder}


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.mark.integration
def test_members_exploit_and_each_run_goes_on_as_one_run_with_one_step_sequence(pbt_sweep):
    from gan.callbacks import SHIFT_KEY
    from gan.checkpoint import load_checkpoint
    from gan.train import steps_per_epoch
    from pipelines.tracking.exploits import exploits

    client, members = pbt_sweep["client"], pbt_sweep["members"]
    assert len(members) == MEMBERS and all(m.info.status == "FINISHED" for m in members), pbt_sweep["err"][-3000:]
    assert "a population (pbt, QMC-drawn, perturbed every 1 epochs" in pbt_sweep["err"]
    ids = {m.info.run_id for m in members}
    rows = {m.info.run_id: exploits(client, m.info.run_id) for m in members}
    # 4 members, a quarter copies a quarter: one exploit at each of the 2 perturbation epochs
    assert sorted(e["epoch"] for r in rows.values() for e in r) == [1, 2], rows
    for m in members:
        run_id = m.info.run_id
        losses, evals = _steps(client, run_id, "d_loss"), _steps(client, run_id, names.FID)
        assert losses == sorted(set(losses)) and evals == sorted(set(evals)), "a step logged twice or out of order"
        assert [int(v.value) for v in client.get_metric_history(run_id, names.EPOCH)] == [1, 2, 3]
        # what it cost: each of its 3 lives wrote its wall time so far when it ended (paused twice)
        walls = [v.value for v in sorted(client.get_metric_history(run_id, names.WALL_S), key=lambda v: v.timestamp)]
        assert len(walls) == EPOCHS and walls[0] > 0, walls
        assert all(a < b for a, b in zip(walls, walls[1:], strict=False)), walls
        # its last life started at epoch 2, at its own run's step there (not a donor's)
        at_2 = next(v.step for v in client.get_metric_history(run_id, names.EPOCH) if v.value == 2)
        assert m.data.tags[names.RESUMED_FROM_STEP] == str(at_2)
        for e in rows[run_id]:
            assert e["from_run_id"] in ids - {run_id} and " -> " in e["changes"]
            # its losses go on from the step it had logged at the exploit, with no gap
            assert e["step"] in losses and e["step"] + 1 in losses
            values = json.loads(e["values"])
            history = {s.step: s.value for s in client.get_metric_history(run_id, "pbt/lr_g")}
            assert history[e["step"]] == pytest.approx(values["lr_g"])
        if rows[run_id]:
            e = rows[run_id][-1]
            assert m.data.tags[names.PBT_EXPLOITS] == str(len(rows[run_id]))
            cfg = yaml.safe_load(Path(client.download_artifacts(run_id, names.CONFIG_FILE,
                                                                str(pbt_sweep["folder"]))).read_text())
            assert cfg["lr_g"] == pytest.approx(json.loads(e["values"])["lr_g"])  # config.yaml: as it trains now
            # The donor's clock went on: the member's last checkpoint holds the donor's step at
            # the exploit plus the steps of the epochs after it (at the copied batch size),
            # and the shift that maps it onto this run's steps.
            ckpts = sorted(a.path for a in client.list_artifacts(run_id, names.CHECKPOINT_DIR))
            state = load_checkpoint(client.download_artifacts(run_id, ckpts[-1], str(pbt_sweep["folder"])))
            after = steps_per_epoch(make_cfg(cfg), 5000) * (EPOCHS - e["epoch"])
            assert state["epoch"] == EPOCHS and state["step"] == e["from_step"] + after
            shift = state.get(SHIFT_KEY, 0)  # absent: 0 (the donor had taken as many steps)
            assert shift == e["step"] - e["from_step"] and max(losses) == state["step"] + shift


def make_cfg(values: dict):
    from gan.config import make_config

    return make_config(values)


@pytest.mark.integration
def test_the_parent_shows_the_family_tree_and_promote_names_the_lineage(pbt_sweep):
    client, parent = pbt_sweep["client"], pbt_sweep["client"].get_run(pbt_sweep["parent"].info.run_id)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "pbt")}
    assert arts == {names.PBT_LINEAGE_FILE, names.PBT_SCHEDULES_FILE, "pbt/schedules.csv"}
    note = parent.data.tags[names.NOTE]
    assert "**Population (pbt)**: 4 members, 2 exploits at epochs 1, 2." in note and "best member's weights" in note
    table = Path(client.download_artifacts(parent.info.run_id, "pbt/schedules.csv", str(pbt_sweep["folder"])))
    assert len(table.read_text().splitlines()) == 1 + MEMBERS + 2  # a row per stretch between exploits
    assert "at the end: lr_g=" in pbt_sweep["out"]

    version = client.get_model_version_by_alias("pbt-gen", "champion")
    # the member's best model: it may be from any of its evals, not only its last
    best, model = client.get_run(version.run_id), client.get_logged_model(version.tags[names.VERSION_MODEL_ID])
    assert version.description.startswith(
        "Population-based training: the weights of this generator "
        f"(epoch {model.tags[names.MODEL_EPOCH]} of run {best.info.run_name.split(' ')[0]})")
    # one line per exploit on the weights' line of descent
    assert version.description.count(" copied ") == version.description.count(" <- ")


@pytest.mark.integration
def test_the_promoted_member_reevaluates_to_its_logged_score(pbt_sweep):
    client = pbt_sweep["client"]
    champion = client.get_model_version_by_alias("pbt-gen", "champion")
    done = _cli(["evaluate", "--model", "models:/pbt-gen@champion", "--log"], pbt_sweep["env"], pbt_sweep["folder"])
    assert f"logged to run {champion.run_id}" in done.stdout
    again = client.get_run(champion.run_id).data.metrics["eval_classifier_fid"]
    assert again == pytest.approx(float(champion.tags["metric_value"]), rel=1e-6)


@pytest.mark.integration
def test_confirm_refuses_a_population_sweep_in_one_line_and_creates_nothing(pbt_sweep):
    client, parent = pbt_sweep["client"], pbt_sweep["parent"]
    before = client.search_runs([parent.info.experiment_id], "", max_results=1000)
    folders = sorted(p.name for p in (pbt_sweep["folder"] / "ray").iterdir())
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "confirm", "--sweep", "pbt"], env=pbt_sweep["env"],
                          cwd=pbt_sweep["folder"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "a population sweep (--scheduler pbt) cannot be confirmed" in lines[0]
    after = client.search_runs([parent.info.experiment_id], "", max_results=1000)
    assert len(after) == len(before) and sorted(p.name for p in (pbt_sweep["folder"] / "ray").iterdir()) == folders


@pytest.mark.integration
@pytest.mark.skipif(missing_outside_ci(not (CHROMIUM.exists() and CHROMEDRIVER.exists())),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_mlflow_ui_shows_a_members_exploits_and_the_family_tree(pbt_sweep, browser, tmp_path):
    members = pbt_sweep["members"]
    copier = next(m for m in members if names.PBT_LAST_EXPLOIT in m.data.tags)
    base = pbt_sweep["env"]["MLFLOW_TRACKING_URI"] + f"/#/experiments/{copier.info.experiment_id}/runs"
    driver = browser
    shots = tmp_path / "screenshots"
    shots.mkdir()
    # the copier's page: its description lists the exploit, its tags say the last one
    driver.get(f"{base}/{copier.info.run_id}?workflowType=machine_learning")
    driver.execute_script("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')")  # room for the page
    driver.get(f"{base}/{copier.info.run_id}?workflowType=machine_learning")
    _wait_for(driver, lambda d: "Exploits" in _text(d) and "copied" in _text(d), "the member's exploits")
    _shot(driver, shots, "6_pbt_member_exploits")
    # the parent's family tree
    parent = pbt_sweep["parent"].info.run_id
    driver.get(f"{base}/{parent}/artifactPath/{names.PBT_LINEAGE_FILE}?workflowType=machine_learning")
    _wait_for(driver, lambda d: any(d.execute_script("return arguments[0].naturalWidth", i) > 500
                                    for i in d.find_elements("tag name", "img")), "the lineage plot")
    _shot(driver, shots, "7_pbt_family_tree",
          target="return [...document.images].find(i => i.complete && i.naturalWidth > 500) || null;")
    if os.environ.get(SHOTS_ENV):
        dest = REPO / "benchmarks" / "ui_screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            (dest / png.name).write_bytes(png.read_bytes())


# --------------------------------------------------------------------------- killed and resumed


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Members on 2 Ray Train workers each (2 members, 3 epochs: each life of a member is a Ray
# Train run of its own, stopped at the next perturbation epoch; the 2 workers fill this
# machine, so members train one at a time). One worker per member: the 8-member test below.
KILLED = {"two workers": (2, 3, 2)}


def _killed_after_first_exploit(tmp_path: Path, space: dict, workers: int = 1) -> tuple[object, dict[str, str]]:
    """`sweep --scheduler pbt` of `space` in `tmp_path`, SIGKILLed (the driver and every
    process it started) as soon as a member has recorded its first exploit: mid-round, the
    members that copied another one at that epoch just restarted. Returns (a client of its
    store, the environment the resume runs with)."""
    from pipelines.tracking.store import client_for

    sqlite_store(tmp_path)
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(space))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "first.log", "wb")  # noqa: SIM115 - closed below
    driver = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sweep", "--space", "pbt.yaml", "--scheduler",
                               "pbt", "--name", "cut", "--workers-per-trial", str(workers)], cwd=tmp_path, env=env,
                              stdout=log, stderr=log, start_new_session=True)
    client = None

    def exploited() -> bool:
        nonlocal client
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        if b"parent run" not in (tmp_path / "first.log").read_bytes():
            return False
        client = client or client_for(sqlite_store(tmp_path))
        exp = client.get_experiment_by_name("gan-pipelines")
        runs = client.search_runs([exp.experiment_id], f"tags.`{names.PBT_EXPLOITS}` = '1'") if exp else []
        return bool(runs)

    try:
        wait_for(exploited, timeout=300, every=0.5)
        started = psutil.Process(driver.pid).children(recursive=True)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    wait_for(lambda: not any(_alive(p) for p in started), timeout=120)
    return client, env


def _members(client) -> tuple[object, list]:
    exp = client.get_experiment_by_name("gan-pipelines").experiment_id
    parent = client.search_runs([exp], "tags.`sweep.role` = 'parent'")[0]
    return parent, client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


@pytest.mark.slow  # a PBT sweep killed after its first exploit and resumed: 5 minutes
@pytest.mark.integration
@pytest.mark.parametrize("members, epochs, workers", list(KILLED.values()), ids=list(KILLED))
def test_a_killed_pbt_driver_resumes_with_nothing_logged_twice(tmp_path, members, epochs, workers):
    from pipelines.tracking.exploits import exploits

    space = {**SPACE, "sweep": {"trials": members, "perturb_every": 1}, "params": {**SPACE["params"], "epochs": epochs}}
    client, env = _killed_after_first_exploit(tmp_path, space, workers)
    resumed = _cli(["sweep", "--resume", "cut"], env, tmp_path, timeout=600)
    assert "best trial" in resumed.stdout
    parent, runs = _members(client)
    assert parent.info.status == "FINISHED" and len(runs) == members
    for m in runs:
        assert m.info.status == "FINISHED", m.data.tags
        for key in ("d_loss", names.FID, "pbt/lr_g"):
            steps = _steps(client, m.info.run_id, key)
            assert len(steps) == len(set(steps)), f"{m.info.run_name}: {key} logged twice at a step"
        assert [int(v.value) for v in client.get_metric_history(m.info.run_id, names.EPOCH)] == [
            *range(1, epochs + 1)]
        done = [e["epoch"] for e in exploits(client, m.info.run_id)]
        assert len(done) == len(set(done)), f"{m.info.run_name}: an exploit recorded twice"
        if workers > 1:  # every life after the first trained on Ray Train workers from the state it was handed
            lives = sorted(p.name for p in (tmp_path / "ray_results").glob(f"gan-{m.info.run_id}*"))
            assert lives == [f"gan-{m.info.run_id}", *(f"gan-{m.info.run_id}-from-epoch-{e}" for e in range(1, epochs))]
            assert m.data.tags[names.DEVICE] == f"{workers}xcpu"


# 8 members: PBT's top quarter is 2, so a round redone after a restart may copy the other one
# of them. 2 epochs, one round (after epoch 1), and 4 batch sizes: a member's clock (its
# checkpoint's step) tells whose weights it trained on, as steps per epoch differ by donor.
CROWD, CROWD_EPOCHS = 8, 2


@pytest.mark.slow  # 8 members killed mid-round and resumed: about 3 minutes on 2 cores
@pytest.mark.integration
def test_after_a_driver_kill_mid_round_each_exploit_names_the_donor_whose_weights_it_copied(tmp_path):
    from gan.callbacks import SHIFT_KEY
    from gan.train import steps_per_epoch
    from pipelines.sweep.population import MUTABLE
    from pipelines.tracking.exploits import exploits
    from pipelines.tracking.history import latest_checkpoint, logged_config

    space = {**SPACE, "sweep": {"trials": CROWD, "perturb_every": 1}, "params": {
        **SPACE["params"], "epochs": CROWD_EPOCHS, "eval_samples": 100,
        "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]}}}
    client, env = _killed_after_first_exploit(tmp_path, space)
    _cli(["sweep", "--resume", "cut"], env, tmp_path, timeout=600)
    parent, runs = _members(client)
    assert parent.info.status == "FINISHED" and len(runs) == CROWD
    names_of = {r.info.run_id: r.info.run_name for r in runs}
    copiers = 0
    for m in runs:
        run_id = m.info.run_id
        assert m.info.status == "FINISHED", m.data.tags
        for key in ("d_loss", names.FID, "pbt/lr_g"):
            steps = _steps(client, run_id, key)
            assert len(steps) == len(set(steps)), f"{m.info.run_name}: {key} logged twice at a step"
        assert [int(v.value) for v in client.get_metric_history(run_id, names.EPOCH)] == [*range(1, CROWD_EPOCHS + 1)]
        rows = exploits(client, run_id)
        assert len(rows) <= 1 and m.data.tags.get(names.PBT_EXPLOITS, "0") == str(len(rows)), rows
        # What the member trained at the end, from its own last checkpoint (not from the record)
        (tmp_path / run_id).mkdir()
        state = latest_checkpoint(client, run_id, tmp_path / run_id)
        trained = state["config"]
        assert logged_config(client, run_id)["lr_g"] == pytest.approx(trained["lr_g"])  # config.yaml: as it trains
        if not rows:
            continue
        copiers += 1
        e = rows[0]
        donor = client.get_run(e["from_run_id"])
        # the weights it trained on are the named donor's: the donor's clock at the exploit
        # plus its own epochs since (at the donor's batch size), mapped onto its run by the shift
        assert donor.data.params["batch_size"] == str(trained["batch_size"]), (names_of, e)
        after = steps_per_epoch(make_cfg(trained), 5000) * (CROWD_EPOCHS - e["epoch"])
        assert state["step"] == e["from_step"] + after, (names_of, e)
        assert state.get(SHIFT_KEY, 0) == e["step"] - e["from_step"]
        assert json.loads(e["values"]) == pytest.approx({k: trained[k] for k in MUTABLE})
        assert f"copied {names_of[e['from_run_id']]}" in m.data.tags[names.PBT_LAST_EXPLOIT]
        in_force = [v for v in client.get_metric_history(run_id, "pbt/lr_g") if v.step <= e["step"] + 1]
        assert max(in_force, key=lambda v: (v.step, v.timestamp)).value == pytest.approx(trained["lr_g"])
    # the bottom quarter copied the top one, once each (Ray skips an exploit whose donor's
    # checkpoint it cannot get: then that member trains on from its own, as recorded)
    assert 1 <= copiers <= CROWD // 4


@pytest.mark.slow  # a PBT driver interrupted mid-epoch: about a minute
@pytest.mark.integration
def test_an_interrupted_pbt_driver_closes_its_members_with_its_own_reason_never_ashas(tmp_path):
    """Ctrl-C on a PBT sweep's driver while its members train (perturbed at epoch 2 of 4,
    scored every epoch): Tune stops each member, which PBT never does. Each member's run
    is closed KILLED saying the driver stopped it, by the member itself or by the driver
    for it; none reads as pruned for its FID."""
    from pipelines.tracking.store import client_for

    sqlite_store(tmp_path)
    space = {**SPACE, "sweep": {"trials": 2, "perturb_every": 2}, "params": {**SPACE["params"], "epochs": 4}}
    (tmp_path / "pbt.yaml").write_text(yaml.safe_dump(space))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115 - closed below
    # SIGINT as a terminal's foreground process has it: a suite started in the background
    # passes it on ignored, and Python then never raises KeyboardInterrupt (test_faults.py)
    driver = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sweep", "--space", "pbt.yaml", "--scheduler",
                               "pbt", "--name", "stopped"], cwd=tmp_path, env=env, stdout=log, stderr=log,
                              start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    client = client_for(sqlite_store(tmp_path))

    def scored_once() -> bool:  # a member has logged its epoch-1 eval: both are training on
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        exp = client.get_experiment_by_name("gan-pipelines")
        return bool(exp and client.search_runs([exp.experiment_id], f"metrics.{names.EPOCH} >= 1"))

    try:
        wait_for(scored_once, timeout=300, every=0.5)
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        log.close()
    _, members = _members(client)
    assert len(members) == 2, (tmp_path / "driver.log").read_text()[-3000:]
    stopped = [m for m in members if m.info.status != "FINISHED"]
    assert stopped, "the driver was interrupted after both members finished"
    for m in stopped:
        reason = m.data.tags.get(names.STOPPED_REASON, "")
        assert m.info.status == "KILLED" and reason.startswith("driver: "), (m.info.status, reason)
        assert f"after epoch {int(m.data.metrics[names.EPOCH])} " in reason  # the last it logged
        assert "competitive" not in reason and not reason.startswith("tune:")
