"""`gan-pipeline sweep`: Ray Tune + Optuna (TPE, define-by-run, so conditional spaces
are real) over a search space file, ASHA pruning on the FID-style score, one parent
MLflow run with a nested child run per trial, and a closing report.

This module is the driver: validation before anything starts, Ray and the private
MLflow server, the Tuner (fresh or restored), the closing summary. The options are
options.py, the searcher/scheduler/trainable tuning.py, the parent run parent.py, what a
trial runs trial.py, the runs of trials that could not close their own closing.py, the
report report.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan.config import ConfigError, RunConfig, make_config
from pipelines.sweep.options import POPULATION, Sweep, SweepOptions
from pipelines.sweep.population import check_population, perturbation_epochs, quiet_tune_logs
from pipelines.sweep.space import SearchSpace
from pipelines.sweep.space_file import load_space
from pipelines.sweep.tuning import (
    make_trainable,
    progress_callback,
    rung_epochs,
    searched_trials,
)
from pipelines.tracking import names

if TYPE_CHECKING:
    from pipelines.sweep.closing import Ended
    from pipelines.sweep.seeding import Seeds

# loaded once per sweep (the trials share it): never searched
DATA_KEYS = ("dataset", "data_dir", "image_size", "data_mode", "data_budget_mb")
# A trial whose process or node dies (a lost spot worker) is restarted, on any node, and
# continues its own MLflow run from its last checkpoint (trial.py); a crash twice more ends it.
TRIAL_RETRIES = 2


@dataclass
class SweepOutcome:
    name: str
    experiment_id: str
    parent_run_id: str
    runs: list[Any]
    best: Any | None
    tracking_uri: str
    seconds: float
    space: SearchSpace


# --------------------------------------------------------------------------- checks


def check_space_for_sweep(space: SearchSpace, opts: Sweep) -> Any:
    """Load the data once and dry-build the extremes; returns the data (for ray.put)."""
    from gan.train import check_batch
    from pipelines.training.prepare import prepare

    for key in DATA_KEYS:
        if any(p.name == key for p in space.params):
            raise ConfigError(f"search space {space.path}: {key}: cannot be searched (the sweep "
                              "loads the data once): give it a fixed value")
    corner = {p.name: p.choices[0] if p.kind == "categorical" else p.low for p in space.params}
    cfg = make_config({**space.fixed, **corner})
    data = prepare(cfg, world_size=opts.workers_per_trial, check_device=opts.gpus_per_trial == 0)
    widest = dataclasses.replace(cfg, batch_size=space.max_value("batch_size"),
                                 n_dis=space.max_value("n_dis"))
    check_batch(widest, len(data), opts.workers_per_trial)
    if opts.gpus_per_trial == 0:
        # Build the evaluator once here: a bad backbone fails before any trial, and the
        # one-time work (training the classifier backbone, real statistics) is cached
        # before trials start instead of every trial waiting on its lock.
        import torch

        from pipelines.training.prepare import build_evaluator

        build_evaluator(cfg, data, torch.device("cpu"))
    return data


# --------------------------------------------------------------------------- the sweep


def run_sweep(given: SweepOptions, resume: str | None = None) -> SweepOutcome:
    """Run a sweep; with `resume`, continue an interrupted one, or extend a finished one
    to `given.trials` trials in all (parent.restore_settings). A new sweep with
    `given.warm_start` starts its searcher from that sweep's scored trials (seeding.py)."""
    from pipelines.distributed.connect import check_reachable, ray_address
    from pipelines.sweep.parent import Resumed, create_parent, find_parent, restore_settings, start_extension
    from pipelines.sweep.seeding import extension_seeds, record_warm_start, warm_start_seeds
    from pipelines.tracking.lease import lease
    from pipelines.tracking.store import absolute_uri, client_for, ensure_experiment, probe_store
    from pipelines.tracking.store import tracking_uri as default_uri

    if resume and given.warm_start:
        raise ConfigError(f"--warm-start {given.warm_start} is invalid with --resume: a resumed or extended "
                          "sweep's searcher goes on from its own trials")
    started = time.time()
    uri = absolute_uri(default_uri())  # trials open the store from their own folders
    # bounded; before anything exists. Reading an earlier sweep needs a store that has it:
    # opening a missing local one would create it empty.
    probe_store(uri, must_exist=bool(resume or given.warm_start))
    check_reachable(ray_address(given.ray_address))  # before the parent run exists
    seeds: Seeds | None = None
    resumed: Resumed | None = None
    if not resume:  # a bad space or flag fails before the store is even opened
        space = load_space(given.space)
        opts = given.resolved(space)
        check_population(space, opts)
        if opts.warm_start:  # reads only; before the data is loaded
            seeds = warm_start_seeds(client_for(uri), opts.experiment, opts.warm_start, space)
        data = check_space_for_sweep(space, opts)
    client = client_for(uri)
    if resume:
        exp = client.get_experiment_by_name(given.experiment)  # never created by a resume
        experiment_id = str(exp.experiment_id) if exp is not None else ""
        resumed = restore_settings(client, experiment_id or None, resume, given)
        parent_id, opts, space = resumed.parent.info.run_id, resumed.opts, resumed.space
        if resumed.had is not None and opts.scheduler in POPULATION:  # a finished population's members are done
            raise ConfigError(f"--resume {resume} --trials is invalid: a {opts.scheduler} population is not extended")
        if resumed.had is not None:  # an extension: its searcher goes on from every trial scored so far
            seeds = extension_seeds(client, resumed.parent, space)
        data = check_space_for_sweep(space, opts)
    else:
        experiment_id = ensure_experiment(client, given.experiment)
        if find_parent(client, experiment_id, opts.name) is not None:
            raise ConfigError(f"--name {opts.name!r} is invalid: that sweep exists "
                              f"(continue it with --resume {opts.name})")
        parent_id, experiment_id = create_parent(client, experiment_id, space, opts)
        if seeds is not None:
            record_warm_start(client, parent_id, seeds)
    had = resumed.had if resumed is not None else None  # an extension: the trials the finished sweep had
    extending = had is not None
    from pipelines.tracking.ending import parent_guard

    # The driver holds the parent's lease while it runs: a second --resume of this sweep
    # (to continue or extend it) is refused while this one is alive.
    with lease(client, parent_id, contested=bool(resume)):
        if resumed is not None:
            if extending:
                start_extension(client, resumed)
            client.update_run(parent_id, status="RUNNING")
        trials = opts.trials - (had or 0)  # an extension adds the rest (a restore ignores it)
        print(f"sweep {opts.name}: {trials} trials of {space.path}, {opts.how}; parent run {parent_id}",
              file=sys.stderr)
        if seeds is not None:
            left_out = f", {seeds.left_out} lost or unfit left out" if seeds.left_out else ""
            print(f"  searcher seeded with {len(seeds.trials)} trials of sweep {seeds.sweep} "
                  f"({seeds.scored} scored{left_out})"
                  + (f"; trials {had} -> {opts.trials}, Tune folder {opts.folder}" if extending else ""),
                  file=sys.stderr)
        with parent_guard(client, parent_id):
            ended = _tune(space, opts, data, uri, experiment_id, parent_id, opts.folder,
                          restore=bool(resume) and not extending, seeds=seeds, trials=trials)
            return _finish(client, experiment_id, parent_id, space, opts, uri, started, ended)


def _tune(space: SearchSpace, opts: Sweep, data: Any, uri: str, experiment_id: str,
          parent_id: str, exp_dir: Path, restore: bool, seeds: Seeds | None = None,
          trials: int | None = None) -> dict[str, Ended]:
    """Run the trials (`trials` of them, default opts.trials; a searcher seeded with
    `seeds`); returns how Tune ended each trial it knows (it may have lost some:
    closing.py)."""
    from ray import tune

    from pipelines.sweep.closing import tune_outcomes
    from pipelines.sweep.report import warm_report_imports
    from pipelines.sweep.searcher_record import reach_store, searcher_record

    perturb = perturbation_epochs(space, opts) if opts.scheduler in POPULATION else ()
    with sweep_services(opts, uri, space, experiment_id, parent_id, rung_epochs(space, opts), exp_dir,
                        perturb) as (ctx, client):
        trainable = make_trainable(data, ctx, opts)
        reach_store(parent_id, ctx.tracking_uri)  # a restored sweep's record writes here too
        if restore:
            # Tune warns with a FileNotFoundError about each trial the killed driver had
            # started but not yet written results for: that trial simply runs again.
            logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            searched = searched_trials(space, opts, seeds, trials)
            tuner = tune.Tuner(
                trainable,
                **searched,
                run_config=tune.RunConfig(
                    name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=0,
                    callbacks=[progress_callback(trials or opts.trials),
                               *searcher_record(opts, ctx.tracking_uri, experiment_id, parent_id)],
                    failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                ),
            )
        # Runs open before this driver's trials start (a killed driver's) have no process to
        # wait for at the end; closing.py closes those a restarted trial did not.
        orphans = _open_children(client, experiment_id, parent_id) if restore else set()
        if perturb:  # a population
            quiet_tune_logs()
        warm_report_imports()  # the report's libraries load while the trials run
        grid = tuner.fit()
        # A pruned trial closes its own run as Tune stops it; give it that moment before
        # ray.shutdown ends its process.
        _wait_children_closed(client, experiment_id, parent_id, orphans)
        return tune_outcomes(grid)


@contextlib.contextmanager
def sweep_services(opts: Sweep, uri: str, space: SearchSpace, experiment_id: str, parent_id: str,
                   rungs: tuple[int, ...], exp_dir: Path | None = None,
                   perturb: tuple[int, ...] = ()) -> Iterator[tuple[Any, Any]]:
    """What a sweep's (or its confirmation's) trials run with: Ray (joined, or a local one
    started and ended here), a private `mlflow server` in front of a sqlite store many
    trials write at once, and the TrialContext they share; yields (context, a client of
    the store as the trials reach it)."""
    from pipelines.distributed.connect import connect, disconnect, ray_address
    from pipelines.sweep.trial import TrialContext
    from pipelines.tracking.server import LocalServer, needs_server
    from pipelines.tracking.store import client_for

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # Ray workers inherit it
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is silent only in the old one
    # Save Tune's state every second (default: >= 10 s), so a driver killed just after a
    # trial started rarely leaves a child run that the restored sweep does not know.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    logs = exp_dir or opts.folder
    logs.mkdir(parents=True, exist_ok=True)
    server = LocalServer(uri, logs / "mlflow-server.log") if needs_server(uri, opts.concurrency) else None
    started_ray = False
    try:
        started_ray = connect(ray_address(opts.ray_address), uri)
        trial_uri = server.url() if server else uri
        yield TrialContext(trial_uri, experiment_id, parent_id, opts.name, opts.cpus_per_trial,
                           opts.gpus_per_trial, opts.workers_per_trial,
                           str(Path(opts.storage_path).expanduser().resolve()),
                           searched=tuple(p.name for p in space.params), rungs=rungs, perturb=perturb,
                           dataset=str(space.fixed.get("dataset", RunConfig.dataset))), client_for(trial_uri)
    finally:
        if server:
            server.stop()
        if started_ray:
            disconnect()


def _open_children(client: Any, experiment_id: str, parent_id: str) -> set[str]:
    from pipelines.sweep.report import child_runs

    return {r.info.run_id for r in child_runs(client, experiment_id, parent_id) if r.info.status == "RUNNING"}


def _wait_children_closed(client: Any, experiment_id: str, parent_id: str, orphans: set[str],
                          timeout_s: float = 15.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not _open_children(client, experiment_id, parent_id) - orphans:
            return
        time.sleep(0.5)


def _finish(client: Any, experiment_id: str, parent_id: str, space: SearchSpace,
            opts: Sweep, uri: str, started: float, ended: dict[str, Ended]) -> SweepOutcome:
    from mlflow.entities import Metric

    from pipelines.sweep.closing import close_open_trials, record_runless_trials
    from pipelines.sweep.family import log_family
    from pipelines.sweep.parent import extensions
    from pipelines.sweep.report import best_run, child_runs, log_report

    close_open_trials(client, child_runs(client, experiment_id, parent_id), ended,
                      population=opts.scheduler in POPULATION)
    record_runless_trials(client, experiment_id, parent_id, opts.name, child_runs(client, experiment_id, parent_id),
                          ended, tuple(p.name for p in space.params))
    runs = child_runs(client, experiment_id, parent_id)
    runs = log_report(client, parent_id, runs, space)  # as renamed and described
    if opts.scheduler in POPULATION:
        try:
            log_family(client, parent_id, runs, space, opts.scheduler)
        except Exception as e:  # noqa: BLE001 - the family tree must not lose the sweep's end
            print(f"note: no family tree: {type(e).__name__}: {e}", file=sys.stderr)
    best = best_run(runs)
    # Over all trials; an extended sweep logs them at the extension's number as the step,
    # so each metric's history shows the sweep before and after each extension, and its
    # seconds add this driver's to those before.
    parent = client.get_run(parent_id)
    step = extensions(parent)
    seconds = time.time() - started + (parent.data.metrics.get(names.SWEEP_SECONDS, 0.0) if step else 0.0)
    now = int(time.time() * 1000)
    metrics = [Metric(names.TRIALS_FINISHED, sum(r.info.status == "FINISHED" for r in runs), now, step),
               Metric(names.SWEEP_SECONDS, seconds, now, step)]
    if best is not None:
        metrics += [Metric(f"{names.SWEEP_PREFIX}{k}", best.data.metrics[k], now, step)
                    for k in (names.FID, names.BEST_FID) if k in best.data.metrics]
        client.set_tag(parent_id, names.BEST_RUN_ID, best.info.run_id)
        client.set_tag(parent_id, names.BEST_TRIAL_ID, best.data.tags.get(names.TRIAL_ID, ""))
    client.log_batch(parent_id, metrics=metrics)
    client.set_terminated(parent_id, "FINISHED")
    return SweepOutcome(opts.name, experiment_id, parent_id, runs, best, uri, seconds, space)
