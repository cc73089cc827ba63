"""`gan-pipeline sweep`: Ray Tune + Optuna (TPE, define-by-run, so conditional spaces
are real) over a search_spaces/*.yaml file, ASHA pruning on the FID-style score, one
parent MLflow run with a nested child run per trial, and a closing report.

This module is the driver: options, validation before anything starts, the parent run,
Ray and the private MLflow server, the Tuner (fresh or restored), the report. What a
trial runs is pipelines.sweep_trial; the report is pipelines.sweep_report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.config import ConfigError, make_config
from pipelines.search_space import SearchSpace, load_space, resolve_path

DEFAULT_SPACE = "quick"
DEFAULT_STORAGE = "./ray_results"
METRIC, MODE = "fid", "min"
DATA_KEYS = ("dataset", "data_dir", "image_size")  # loaded once per sweep: never searched
ROLE_TAG = "sweep.role"


@dataclass(frozen=True)
class SweepOptions:
    """A sweep's settings; None means "from the space file's `sweep:` block, else default"."""

    space: str = DEFAULT_SPACE
    trials: int | None = None
    concurrency: int | None = None
    scheduler: str = "asha"
    grace_period: int | None = None  # evals a trial runs before ASHA may stop it
    searcher: str = "tpe"
    experiment: str = "gan-pipelines"
    seed: int = 0
    name: str | None = None
    workers_per_trial: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage_path: str = DEFAULT_STORAGE
    ray_address: str | None = None

    def resolved(self, space: SearchSpace) -> SweepOptions:
        """Every None filled in; every value checked (ConfigError, one line)."""
        d = space.sweep
        name = self.name or f"sweep-{Path(space.path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        out = dataclasses.replace(
            self, trials=d.get("trials", 10) if self.trials is None else self.trials,
            concurrency=d.get("concurrency", 1) if self.concurrency is None else self.concurrency,
            grace_period=d.get("grace_period", 1) if self.grace_period is None else self.grace_period,
            name=name,
            space=str(resolve_path(self.space)),
        )
        for flag, v in (("--trials", out.trials), ("--concurrency", out.concurrency),
                        ("--grace-period", out.grace_period),
                        ("--workers-per-trial", out.workers_per_trial)):
            if v < 1:
                raise ConfigError(f"{flag} {v} is invalid: must be a positive integer")
        if out.scheduler not in ("asha", "none"):
            raise ConfigError(f"--scheduler {out.scheduler!r} is invalid: must be asha or none")
        if out.searcher not in ("tpe", "random"):
            raise ConfigError(f"--searcher {out.searcher!r} is invalid: must be tpe or random")
        if not out.cpus_per_trial > 0:
            raise ConfigError(f"--cpus-per-trial {out.cpus_per_trial} is invalid: must be > 0")
        if not out.gpus_per_trial >= 0:
            raise ConfigError(f"--gpus-per-trial {out.gpus_per_trial} is invalid: must be >= 0 "
                              "(fractions share a GPU, e.g. 0.5)")
        if out.workers_per_trial > 1 and 0 < out.gpus_per_trial < 1:
            raise ConfigError("--gpus-per-trial below 1 is invalid with --workers-per-trial > 1: "
                              "each Ray Train worker takes a whole GPU")
        if not out.name or "/" in out.name or out.name.startswith("."):
            raise ConfigError(f"--name {out.name!r} is invalid: must be a plain folder name")
        return out


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


def check_space_for_sweep(space: SearchSpace, opts: SweepOptions) -> Any:
    """Load the data once and dry-build the extremes; returns the data (for ray.put)."""
    from gan.train import check_batch
    from pipelines.training import prepare

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

        from pipelines.training import build_evaluator

        build_evaluator(cfg, data, torch.device("cpu"))
    return data


def absolute_paths(space: SearchSpace) -> dict[str, Any]:
    """Trials run in Tune's trial folders: paths in the config must not be relative."""
    fixed = dict(space.fixed)
    if "data_dir" in fixed:
        fixed["data_dir"] = str(Path(fixed["data_dir"]).expanduser().resolve())
    ds = fixed.get("dataset", "")
    if isinstance(ds, str) and ds.startswith("folder:"):
        fixed["dataset"] = "folder:" + str(Path(ds[len("folder:"):]).expanduser().resolve())
    return fixed


# --------------------------------------------------------------------------- tune set-up


def make_searcher(space: SearchSpace, opts: SweepOptions) -> Any:
    import warnings

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if opts.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=opts.seed)
    else:
        # group=True: TPE models each conditional branch's parameters together;
        # constant_liar: concurrent trials do not all probe the same point.
        sampler = optuna.samplers.TPESampler(
            seed=opts.seed, multivariate=True, group=True, constant_liar=True,
            n_startup_trials=min(10, max(2, opts.trials // 3)),
        )
    return OptunaSearch(space=space.suggest, metric=METRIC, mode=MODE, sampler=sampler)


def make_scheduler(space: SearchSpace, opts: SweepOptions) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if opts.scheduler == "none":
        return FIFOScheduler()
    eval_every = space.max_value("eval_every")
    # time_attr "epoch": both trial kinds report it. max_t above the last epoch: ASHA
    # stops a trial that reaches max_t, and a finished trial must end on its own.
    return ASHAScheduler(metric=METRIC, mode=MODE, time_attr="epoch",
                         grace_period=opts.grace_period * eval_every,
                         max_t=space.max_value("epochs") + 1, reduction_factor=2)


def make_trainable(data: Any, ctx: Any, opts: SweepOptions) -> Any:
    from ray import tune

    from pipelines.sweep_trial import run_trial

    # With N workers the trial only drives a TorchTrainer and needs no CPU (N workers on N
    # cores must fit); its workers ask for the CPUs/GPUs. Ray refuses an empty bundle,
    # hence a token of memory.
    resources = ({"cpu": 0, "memory": 1 << 20} if opts.workers_per_trial > 1
                 else {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    # with_parameters: the dataset goes into the object store once, not once per trial.
    return tune.with_resources(tune.with_parameters(run_trial, data=data, ctx=ctx), resources)


def _progress_callback() -> Any:
    """One line per finished trial on the driver's stderr."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r = trial.last_result or {}
            fid = r.get(METRIC, math.nan)
            print(f"  trial {trial.trial_id}: epoch {r.get('epoch', 0)}, FID {fid:.2f} "
                  f"({sum(t.status == 'TERMINATED' for t in trials)} done)", file=sys.stderr)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"  trial {trial.trial_id}: error (see its MLflow run)", file=sys.stderr)

    return Progress()


# --------------------------------------------------------------------------- the sweep


def run_sweep(opts: SweepOptions, resume: str | None = None) -> SweepOutcome:
    """Run (or, with `resume`, continue) a sweep; returns its runs and best trial."""
    from pipelines.tracking import absolute_uri, check_writable, client_for, ensure_experiment
    from pipelines.tracking import tracking_uri as default_uri

    started = time.time()
    uri = absolute_uri(default_uri())  # trials open the store from their own folders
    check_writable(uri)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, opts.experiment)
    if resume:
        parent, opts, space = _restore_settings(client, experiment_id, resume, opts)
        parent_id = parent.info.run_id
        data = check_space_for_sweep(space, opts)
        client.update_run(parent_id, status="RUNNING")
    else:
        space = load_space(opts.space)
        opts = opts.resolved(space)
        data = check_space_for_sweep(space, opts)
        if _find_parent(client, experiment_id, opts.name) is not None:
            raise ConfigError(f"--name {opts.name!r} is invalid: that sweep exists "
                              f"(continue it with --resume {opts.name})")
        parent_id, experiment_id = _create_parent(client, experiment_id, space, opts)
    exp_dir = Path(opts.storage_path).expanduser().resolve() / opts.name
    print(f"sweep {opts.name}: {opts.trials} trials of {space.path}, {opts.concurrency} at a time, "
          f"{opts.searcher} + {opts.scheduler}; parent run {parent_id}", file=sys.stderr)

    from pipelines.training import run_guard

    with run_guard(client, parent_id):
        known = _tune(space, opts, data, uri, experiment_id, parent_id, exp_dir, restore=bool(resume))
        return _finish(client, experiment_id, parent_id, space, opts, uri, started, known)


def _tune(space: SearchSpace, opts: SweepOptions, data: Any, uri: str, experiment_id: str,
          parent_id: str, exp_dir: Path, restore: bool) -> set[str]:
    """Run the trials; returns the trial ids Tune knows (it may have lost some, see _finish)."""
    import ray
    from ray import tune

    from pipelines.sweep_trial import TrialContext
    from pipelines.tracking import client_for
    from pipelines.tracking_server import LocalServer, needs_server

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # Ray workers inherit it
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is silent only in the old one
    # Save Tune's state every second (default: >= 10 s), so a driver killed just after a
    # trial started rarely leaves a child run that the restored sweep does not know.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    exp_dir.mkdir(parents=True, exist_ok=True)
    server = LocalServer(uri, exp_dir / "mlflow-server.log") if needs_server(uri, opts.concurrency) else None
    started_ray = False
    try:
        if not ray.is_initialized():
            ray.init(address=opts.ray_address or os.environ.get("RAY_ADDRESS"), logging_level="WARNING")
            started_ray = True
        from pipelines.ray_train import check_store_for_cluster

        check_store_for_cluster(uri, sum(1 for n in ray.nodes() if n.get("Alive")))
        trial_uri = server.url() if server else uri
        ctx = TrialContext(trial_uri, experiment_id, parent_id, opts.name, opts.cpus_per_trial,
                           opts.gpus_per_trial, opts.workers_per_trial,
                           str(Path(opts.storage_path).expanduser().resolve()))
        trainable = make_trainable(data, ctx, opts)
        if restore:
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
                    callbacks=[_progress_callback()],
                ),
            )
        grid = tuner.fit()
        # A pruned trial closes its own run as Tune stops it; give it that moment before
        # ray.shutdown ends its process.
        _wait_children_closed(client_for(trial_uri), experiment_id, parent_id)
        return {Path(r.path).name.removeprefix("trial_") for r in grid}
    finally:
        if server:
            server.stop()
        if started_ray:
            ray.shutdown()


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Tune's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"


def _wait_children_closed(client: Any, experiment_id: str, parent_id: str,
                          timeout_s: float = 15.0) -> None:
    from pipelines.sweep_report import child_runs

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        runs = child_runs(client, experiment_id, parent_id)
        if not any(r.info.status == "RUNNING" for r in runs):
            return
        time.sleep(0.5)


def _finish(client: Any, experiment_id: str, parent_id: str, space: SearchSpace,
            opts: SweepOptions, uri: str, started: float, known: set[str]) -> SweepOutcome:
    from mlflow.entities import Metric

    from pipelines.sweep_report import best_run, child_runs, log_report
    from pipelines.sweep_trial import STOPPED_TAG, TRIAL_TAG

    runs = child_runs(client, experiment_id, parent_id)
    for r in runs:
        if r.data.tags.get(TRIAL_TAG) not in known and r.data.tags.get("sweep.lost") != "true":
            # The driver died after this trial started but before Tune saved its state:
            # the restored sweep replaced it with a new trial. Say so on the orphan.
            client.set_tag(r.info.run_id, "sweep.lost", "true")
            client.set_tag(r.info.run_id, STOPPED_TAG, "lost: the driver died before Tune "
                           "recorded this trial; a new trial took its place")
            if r.info.status == "RUNNING":
                client.set_terminated(r.info.run_id, "KILLED")
        elif r.info.status == "RUNNING":  # a trial whose process died cannot close its own run
            client.set_tag(r.info.run_id, STOPPED_TAG, "tune: the trial's process ended before it closed its run")
            client.set_terminated(r.info.run_id, "KILLED")
    runs = child_runs(client, experiment_id, parent_id)
    log_report(client, parent_id, runs, space)
    best = best_run(runs)
    seconds = time.time() - started
    now = int(time.time() * 1000)
    metrics = [Metric("trials_finished", sum(r.info.status == "FINISHED" for r in runs), now, 0),
               Metric("sweep_seconds", seconds, now, 0)]
    if best is not None:
        metrics += [Metric(k, best.data.metrics[k], now, 0) for k in ("fid", "best_fid")
                    if k in best.data.metrics]
        client.set_tag(parent_id, "best_run_id", best.info.run_id)
        client.set_tag(parent_id, "best_trial_id", best.data.tags.get("tune_trial_id", ""))
    client.log_batch(parent_id, metrics=metrics)
    client.set_terminated(parent_id, "FINISHED")
    return SweepOutcome(opts.name, experiment_id, parent_id, runs, best, uri, seconds, space)


# --------------------------------------------------------------------------- parent run


def _create_parent(client: Any, experiment_id: str, space: SearchSpace,
                   opts: SweepOptions) -> tuple[str, str]:
    """(run id, experiment id) of the new parent run; under `mlflow run` the project's own
    run becomes the parent (MLproject: never a stray extra run)."""
    from mlflow.entities import Param

    from pipelines.sweep_trial import SWEEP_TAG
    from pipelines.tracking import environment_tags
    from pipelines.training import open_run

    exp_dir = Path(opts.storage_path).expanduser().resolve() / opts.name
    exp_dir.mkdir(parents=True, exist_ok=True)
    # The space as it was at the start: a resumed sweep samples the same space.
    (exp_dir / "space.yaml").write_text(Path(space.path).read_text())
    (exp_dir / "sweep.json").write_text(json.dumps(dataclasses.asdict(opts), indent=2))
    tags = {**environment_tags(space.fixed.get("dataset", "mnist-5k"), "sweep"),
            SWEEP_TAG: opts.name, ROLE_TAG: "parent", "sweep.storage": str(exp_dir),
            "mlflow.runName": opts.name}
    run_id, experiment_id = open_run(client, experiment_id, opts.name, tags)
    params = {f"sweep.{k}": v for k, v in dataclasses.asdict(opts).items() if v is not None}
    params.update({f"fixed.{k}": v for k, v in space.fixed.items()})
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.log_artifact(run_id, space.path, "search_space")
    return run_id, experiment_id


def _find_parent(client: Any, experiment_id: str, name: str | None) -> Any | None:
    from pipelines.sweep_trial import SWEEP_TAG

    where = f"tags.`{ROLE_TAG}` = 'parent'" + (f" and tags.`{SWEEP_TAG}` = '{name}'" if name else "")
    if not name:
        where += " and attributes.status != 'FINISHED'"
    runs = client.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None


def _restore_settings(client: Any, experiment_id: str, name: str,
                      given: SweepOptions) -> tuple[Any, SweepOptions, SearchSpace]:
    """The parent run, options and space of the sweep to continue ('latest': the newest
    unfinished one); ray_address may change between drivers, the rest may not."""
    from pipelines.tracking import TrackingError

    parent = _find_parent(client, experiment_id, None if name == "latest" else name)
    if parent is None:
        what = "no unfinished sweep" if name == "latest" else f"no sweep named {name!r}"
        raise TrackingError(f"--resume: {what} in experiment {given.experiment!r}")
    exp_dir = Path(parent.data.tags["sweep.storage"])
    try:
        saved = json.loads((exp_dir / "sweep.json").read_text())
    except OSError:
        raise TrackingError(f"--resume: the sweep's Tune state is gone ({exp_dir})") from None
    from ray import tune

    if not tune.Tuner.can_restore(str(exp_dir)):
        raise TrackingError(f"--resume: nothing to restore in {exp_dir} (the sweep never started)")
    opts = dataclasses.replace(SweepOptions(**saved), ray_address=given.ray_address)
    space = load_space(exp_dir / "space.yaml")
    space = dataclasses.replace(space, path=opts.space)
    return parent, opts, space


# --------------------------------------------------------------------------- CLI


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`gan-pipeline sweep`, registered by pipelines.cli.build_parser."""
    s = subparsers.add_parser(
        "sweep", help="sweep hyperparameters: Ray Tune + Optuna, nested MLflow runs",
        description="Sweep a search space (search_spaces/*.yaml) with Ray Tune + Optuna TPE and "
        "ASHA early stopping; one parent MLflow run with a nested child run per trial and a "
        "summary table, parameter plots and the best trials' samples. With no arguments: "
        "search_spaces/quick.yaml on the embedded mnist-5k, a few minutes on a CPU.")
    s.add_argument("--space", default=DEFAULT_SPACE, metavar="FILE",
                   help="search space YAML, or a name in search_spaces/ (default: quick)")
    s.add_argument("--trials", type=int, default=None, metavar="N",
                   help="trials in all (default: the space's sweep.trials, else 10)")
    s.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="trials at a time (default: the space's sweep.concurrency, else 1)")
    s.add_argument("--scheduler", default="asha", choices=("asha", "none"),
                   help="asha: stop trials whose FID trails at a rung (default); none: run all")
    s.add_argument("--grace-period", type=int, default=None, metavar="EVALS",
                   help="evals every trial gets before ASHA may stop it (default: the space's, else 1)")
    s.add_argument("--searcher", default="tpe", choices=("tpe", "random"),
                   help="Optuna sampler (default: tpe, multivariate, seeded)")
    s.add_argument("--experiment", default="gan-pipelines", help="MLflow experiment (default: gan-pipelines)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sampler (default: 0)")
    s.add_argument("--name", default=None, help="sweep name: MLflow parent run and Ray folder "
                   "(default: sweep-SPACE-TIMESTAMP)")
    s.add_argument("--resume", nargs="?", const="latest", default=None, metavar="NAME",
                   help="continue an interrupted sweep in its parent run (no NAME: the newest "
                   "unfinished one); its saved settings are used")
    g = s.add_argument_group("resources")
    g.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                   help="N > 1: each trial trains data-parallel under Ray Train (default: 1, in-process)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="C",
                   help="CPUs (torch threads) per trial, or per worker with --workers-per-trial (default: 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="G",
                   help="GPUs per trial; fractions share a GPU, e.g. 0.5 (default: 0)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray)")
    g.add_argument("--ray-storage", default=DEFAULT_STORAGE, metavar="PATH",
                   help=f"Tune state of the sweep, for --resume (default: {DEFAULT_STORAGE})")
    s.set_defaults(func=cmd_sweep)
    return s


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    return SweepOptions(
        space=args.space, trials=args.trials, concurrency=args.concurrency, scheduler=args.scheduler,
        grace_period=args.grace_period, searcher=args.searcher, experiment=args.experiment,
        seed=args.seed, name=args.name, workers_per_trial=args.workers_per_trial,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        storage_path=args.ray_storage, ray_address=args.ray_address,
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep_report import sampled_params
    from pipelines.tracking import ui_hint

    resume = args.resume
    if resume and args.name and resume == "latest":
        resume = args.name
    out = run_sweep(options_from_args(args), resume=resume)
    done = sum(r.info.status == "FINISHED" for r in out.runs)
    print(f"sweep {out.name}: {len(out.runs)} trials ({done} finished, "
          f"{len(out.runs) - done} stopped early or failed) in {out.seconds:.0f} s")
    if out.best is None:
        print("no trial produced a finite FID")
        return 1
    b = out.best
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in sampled_params(b, out.space).items())
    m = b.data.metrics
    print(f"best trial {b.data.tags.get('tune_trial_id')} (run {b.info.run_id}): "
          f"FID {m.get('fid', math.nan):.2f} (best during training {m.get('best_fid', math.nan):.2f}, "
          f"{b.data.params.get('backbone', '')} backbone)")
    print(f"  {params}")
    print(ui_hint(out.tracking_uri, out.experiment_id, b.info.run_id))
    return 0
