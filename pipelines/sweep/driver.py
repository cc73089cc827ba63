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

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gan.config import ConfigError, RunConfig, make_config
from pipelines.sweep.options import Sweep, SweepOptions
from pipelines.sweep.space import SearchSpace
from pipelines.sweep.space_file import load_space
from pipelines.sweep.tuning import (
    make_scheduler,
    make_searcher,
    make_trainable,
    progress_callback,
    rung_epochs,
    trial_dirname,
)
from pipelines.tracking import names

if TYPE_CHECKING:
    from pipelines.sweep.closing import Ended

DATA_KEYS = ("dataset", "data_dir", "image_size")  # loaded once per sweep: never searched
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
    """Run (or, with `resume`, continue) a sweep; returns its runs and best trial."""
    from pipelines.distributed.connect import check_reachable, ray_address
    from pipelines.sweep.parent import create_parent, find_parent, restore_settings
    from pipelines.tracking.store import absolute_uri, client_for, ensure_experiment, probe_store
    from pipelines.tracking.store import tracking_uri as default_uri

    started = time.time()
    uri = absolute_uri(default_uri())  # trials open the store from their own folders
    probe_store(uri)  # bounded; before anything exists
    check_reachable(ray_address(given.ray_address))  # before the parent run exists
    if not resume:  # a bad space or flag fails before the store is even opened
        space = load_space(given.space)
        opts = given.resolved(space)
        data = check_space_for_sweep(space, opts)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, given.experiment)
    if resume:
        parent, opts, space = restore_settings(client, experiment_id, resume, given)
        parent_id = parent.info.run_id
        data = check_space_for_sweep(space, opts)
        client.update_run(parent_id, status="RUNNING")
    else:
        if find_parent(client, experiment_id, opts.name) is not None:
            raise ConfigError(f"--name {opts.name!r} is invalid: that sweep exists "
                              f"(continue it with --resume {opts.name})")
        parent_id, experiment_id = create_parent(client, experiment_id, space, opts)
    exp_dir = opts.folder
    print(f"sweep {opts.name}: {opts.trials} trials of {space.path}, {opts.concurrency} at a time, "
          f"{opts.searcher} + {opts.scheduler}; parent run {parent_id}", file=sys.stderr)

    from pipelines.tracking.ending import parent_guard

    with parent_guard(client, parent_id):
        ended = _tune(space, opts, data, uri, experiment_id, parent_id, exp_dir, restore=bool(resume))
        return _finish(client, experiment_id, parent_id, space, opts, uri, started, ended)


def _tune(space: SearchSpace, opts: Sweep, data: Any, uri: str, experiment_id: str,
          parent_id: str, exp_dir: Path, restore: bool) -> dict[str, Ended]:
    """Run the trials; returns how Tune ended each trial it knows (it may have lost some:
    closing.py)."""
    from ray import tune

    from pipelines.distributed.connect import connect, disconnect, ray_address
    from pipelines.sweep.closing import tune_outcomes
    from pipelines.sweep.trial import TrialContext
    from pipelines.tracking.server import LocalServer, needs_server
    from pipelines.tracking.store import client_for

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # Ray workers inherit it
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is silent only in the old one
    # Save Tune's state every second (default: >= 10 s), so a driver killed just after a
    # trial started rarely leaves a child run that the restored sweep does not know.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    exp_dir.mkdir(parents=True, exist_ok=True)
    server = LocalServer(uri, exp_dir / "mlflow-server.log") if needs_server(uri, opts.concurrency) else None
    started_ray = False
    try:
        started_ray = connect(ray_address(opts.ray_address), uri)
        trial_uri = server.url() if server else uri
        ctx = TrialContext(trial_uri, experiment_id, parent_id, opts.name, opts.cpus_per_trial,
                           opts.gpus_per_trial, opts.workers_per_trial,
                           str(Path(opts.storage_path).expanduser().resolve()),
                           searched=tuple(p.name for p in space.params), rungs=rung_epochs(space, opts),
                           dataset=str(space.fixed.get("dataset", RunConfig.dataset)))
        trainable = make_trainable(data, ctx, opts)
        if restore:
            # Tune warns with a FileNotFoundError about each trial the killed driver had
            # started but not yet written results for: that trial simply runs again.
            logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=make_searcher(space, opts), scheduler=make_scheduler(space, opts),
                    num_samples=opts.trials, max_concurrent_trials=opts.concurrency,
                    reuse_actors=True, trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=opts.name, storage_path=str(exp_dir.parent), verbose=0,
                    callbacks=[progress_callback()],
                    failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                ),
            )
        # Runs open before this driver's trials start (a killed driver's) have no process to
        # wait for at the end; closing.py closes those a restarted trial did not.
        orphans = _open_children(client_for(trial_uri), experiment_id, parent_id) if restore else set()
        grid = tuner.fit()
        # A pruned trial closes its own run as Tune stops it; give it that moment before
        # ray.shutdown ends its process.
        _wait_children_closed(client_for(trial_uri), experiment_id, parent_id, orphans)
        return tune_outcomes(grid)
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
    from pipelines.sweep.report import best_run, child_runs, log_report

    close_open_trials(client, child_runs(client, experiment_id, parent_id), ended)
    record_runless_trials(client, experiment_id, parent_id, opts.name, child_runs(client, experiment_id, parent_id),
                          ended, tuple(p.name for p in space.params))
    runs = child_runs(client, experiment_id, parent_id)
    runs = log_report(client, parent_id, runs, space)  # as renamed and described
    best = best_run(runs)
    seconds = time.time() - started
    now = int(time.time() * 1000)
    metrics = [Metric(names.TRIALS_FINISHED, sum(r.info.status == "FINISHED" for r in runs), now, 0),
               Metric(names.SWEEP_SECONDS, seconds, now, 0)]
    if best is not None:
        metrics += [Metric(f"{names.SWEEP_PREFIX}{k}", best.data.metrics[k], now, 0)
                    for k in (names.FID, names.BEST_FID) if k in best.data.metrics]
        client.set_tag(parent_id, names.BEST_RUN_ID, best.info.run_id)
        client.set_tag(parent_id, names.BEST_TRIAL_ID, best.data.tags.get(names.TRIAL_ID, ""))
    client.log_batch(parent_id, metrics=metrics)
    client.set_terminated(parent_id, "FINISHED")
    return SweepOutcome(opts.name, experiment_id, parent_id, runs, best, uri, seconds, space)
