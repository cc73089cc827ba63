"""How Tune runs a sweep's trials: the Optuna searcher (TPE or random, seeded), the ASHA
scheduler on the FID-style score, the trainable with its resources, the progress line
per finished trial (named as in MLflow), and short trial folder names."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

from pipelines.sweep.naming import TUNE_NAME_KEY
from pipelines.sweep.options import METRIC, MODE, POPULATION, Sweep
from pipelines.sweep.space import SearchSpace
from pipelines.tracking import names

if TYPE_CHECKING:
    from pipelines.sweep.seeding import Seeds


def make_searcher(space: SearchSpace, opts: Sweep, seeds: Seeds | None = None) -> Any:
    """Optuna (TPE or random, seeded) over the define-by-run space; with `seeds` (an
    earlier sweep's scored trials, seeding.py) its study starts with them as finished."""
    import warnings

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sampler: optuna.samplers.BaseSampler
    seeded = len(seeds.trials) if seeds else 0
    # A seeded sampler draws from another seed: with the earlier sweep's own seed its random
    # start-up draws would repeat that sweep's first configs, which are already scored.
    seed = opts.seed + seeded
    if opts.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        # group=True: TPE models each conditional branch's parameters together;
        # constant_liar: concurrent trials do not all probe the same point.
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True,
            n_startup_trials=min(10, max(2, opts.trials // 3)),  # the seeds count towards it
        )
    if not seeds or not seeds.trials:
        return OptunaSearch(space=space.suggest, metric=METRIC, mode=MODE, sampler=sampler)
    from pipelines.sweep.seeding import STUDY_NAME, seeded_storage

    return OptunaSearch(space=space.suggest, metric=METRIC, mode=MODE, sampler=sampler,
                        storage=seeded_storage(seeds, space), study_name=STUDY_NAME)


REDUCTION_FACTOR = 2


def _asha_bounds(space: SearchSpace, opts: Sweep) -> tuple[int, int]:
    """(grace period, max_t) in epochs. max_t above the last epoch: ASHA stops a trial
    that reaches max_t, and a finished trial must end on its own."""
    return opts.grace_period * space.max_value("eval_every"), space.max_value("epochs") + 1


def make_scheduler(space: SearchSpace, opts: Sweep) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if opts.scheduler == "none":
        return FIFOScheduler()
    grace, max_t = _asha_bounds(space, opts)
    # time_attr "epoch": both trial kinds report it.
    return ASHAScheduler(metric=METRIC, mode=MODE, time_attr=names.EPOCH, grace_period=grace,
                         max_t=max_t, reduction_factor=REDUCTION_FACTOR)


def rung_epochs(space: SearchSpace, opts: Sweep) -> tuple[int, ...]:
    """The epochs where ASHA compares trials: a trial scores there whatever its eval
    budget and eval_every, so pruning keeps its signal (TuneCallbacks.wants_eval).

    Ray's ASHA places milestones at grace * rf^k up to max_t inclusive; one at max_t
    never judges a trial (max_t is one past the last epoch), so it is left out. The
    tests drive Ray's scheduler to check these are the epochs where it stops a bad trial."""
    if opts.scheduler != "asha":  # a population's perturbation epochs: TrialContext.perturb
        return ()
    grace, max_t = _asha_bounds(space, opts)
    rungs, epoch = [], grace
    while epoch < max_t:
        rungs.append(epoch)
        epoch *= REDUCTION_FACTOR
    return tuple(rungs)


def searched_trials(space: SearchSpace, opts: Sweep, seeds: Seeds | None, trials: int | None) -> dict[str, Any]:
    """The Tuner's arguments that decide which trials run and how they are judged."""
    from ray import tune

    if opts.scheduler not in POPULATION:
        return {"tune_config": tune.TuneConfig(
            search_alg=make_searcher(space, opts, seeds), scheduler=make_scheduler(space, opts),
            num_samples=trials or opts.trials, max_concurrent_trials=opts.concurrency,
            reuse_actors=True, trial_dirname_creator=trial_dirname)}
    from pipelines.sweep.population import make_population_scheduler, param_space

    # The members as a grid (PBT refuses a searcher), all of them created at once: a
    # concurrency limit would hold members back, and synchronous PBT would compare the
    # first ones only. The cluster's CPUs/GPUs limit how many train at a time.
    return {"param_space": param_space(space, opts), "tune_config": tune.TuneConfig(
        scheduler=make_population_scheduler(space, opts), num_samples=1, reuse_actors=True,
        trial_dirname_creator=trial_dirname)}


def make_trainable(data: Any, ctx: Any, opts: Sweep, function: Any = None) -> Any:
    """`function` (default trial.run_trial) with the sweep's data, context and resources."""
    from ray import tune

    from pipelines.compat.ray_api import with_mixins
    from pipelines.sweep.trial import ClosesItsRun, run_trial

    # With N workers the trial only drives a TorchTrainer and needs no CPU (N workers on N
    # cores must fit); its workers ask for the CPUs/GPUs. Ray refuses an empty bundle,
    # hence a token of memory.
    resources: dict[str, float] = ({"cpu": 0, "memory": 1 << 20} if opts.workers_per_trial > 1
                                   else {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    # with_parameters: the dataset goes into the object store once, not once per trial.
    # ClosesItsRun: a stopped trial's actor waits for its run to close.
    trainable = with_mixins(tune.with_parameters(function or run_trial, data=data, ctx=ctx), ClosesItsRun)
    return tune.with_resources(trainable, resources)


HEARTBEAT_S = 60.0  # between the lines that say where the running trials are


def progress_callback(total: int | None = None) -> Any:
    """One line per finished trial on the driver's stderr, naming the trial as MLflow does,
    and every HEARTBEAT_S a line saying where the running trials are: a sweep of long
    trials is not silent until its first one ends. `total`: the trials the sweep will run
    (Tune makes a searcher's trials one by one, so its list does not know)."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.started = self.said = time.monotonic()

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            now = time.monotonic()
            if now - self.said >= HEARTBEAT_S:
                self.said = now
                print(f"  {heartbeat(trials, now - self.started, total)}", file=sys.stderr)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r = trial.last_result or {}
            fid = r.get(METRIC, math.nan)
            done = 1 + sum(t.status == "TERMINATED" for t in trials if t is not trial)  # it is not yet
            print(f"  {shown_name(trial)}: epoch {r.get('epoch', 0)}, FID {fid:.2f} ({done} done)", file=sys.stderr)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            print(f"  {shown_name(trial)}: error (see its MLflow run)", file=sys.stderr)

    return Progress()


def heartbeat(trials: list, elapsed_s: float, total: int | None = None) -> str:
    """`4 min: t03 at epoch 6, t04 at epoch 2 (2 running), 5 done, 33 waiting`."""
    running = [t for t in trials if t.status == "RUNNING"]
    where = ", ".join(at_epoch(t) for t in running[:4]) + (", ..." if len(running) > 4 else "")
    done, failed = (sum(t.status == s for t in trials) for s in ("TERMINATED", "ERROR"))
    waiting = sum(t.status in ("PENDING", "PAUSED") for t in trials) if total is None \
        else max(0, total - len(running) - done - failed)
    clock = f"{elapsed_s / 60:.0f} min" if elapsed_s >= 90 else f"{elapsed_s:.0f} s"
    return (f"{clock}: {where + ' ' if where else ''}({len(running)} running), {done} done, "
            f"{f'{failed} failed, ' if failed else ''}{waiting} waiting")


def at_epoch(trial: Any) -> str:
    """`t03 at epoch 6` (its run's number), `trial def7caf8 starting` before its first report."""
    epoch = (trial.last_result or {}).get("epoch")
    return f"{shown_name(trial, short=True)} " + (f"at epoch {int(epoch)}" if epoch else "starting")


def shown_name(trial: Any, short: bool = False) -> str:
    """The trial's MLflow run name (`t04 dcgan hinge lr_g=3e-4`; `short`: `t04`) as the
    trial reported it to Tune (naming.TUNE_NAME_KEY), so a console line finds its run in
    the runs table. The name comes from the trial itself: only it knows the number its run
    was given. Tune's id (`trial def7caf8`) for a trial that reported no name yet (it
    failed or is still starting: a distributed one's workers may be waiting for CPUs)."""
    name = (trial.last_result or {}).get(TUNE_NAME_KEY)
    if not name:
        return f"trial {trial.trial_id}"
    return str(name).split(" ")[0] if short else str(name)


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Tune's default spells out the whole config)."""
    return f"trial_{trial.trial_id}"
