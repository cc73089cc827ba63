"""Population-based training of a sweep (`--scheduler pbt|pb2`): the population drawn
from the space, Tune's PBT or PB2 scheduler over it, and which parameters it mutates.

A population is `--trials` members trained side by side. Every `--perturb-every` epochs
all of them stop at the same epoch (synchronous PBT), and the lower quarter copies the
checkpoint of a member of the upper quarter and goes on with that member's values,
perturbed: PBT multiplies a continuous value by 0.8 or 1.2 (or draws it again, one time
in four) and moves a listed one to a neighbour; PB2 picks the new values with a
Gaussian-process bandit fitted to how each change paid off.

Mutated: the optimisation knobs that can change while training goes on (MUTABLE), when
the space searches them unconditionally. Everything else (arch, widths, loss, batch
size, an EMA switched on or off) is structural: fixed per member, copied on exploit.

Tune's PBT refuses a searcher, so the population is drawn here, before Tune starts, and
handed to Tune as a grid over whole member configs (nested under MEMBER, which PBT
mutates inside). It is drawn with Optuna's QMC sampler (scrambled Sobol, seeded): a
handful of members covers the continuous ranges more evenly than as many random draws,
and TPE, having no scores yet, would draw at random anyway.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from gan.config import ConfigError, RunConfig
from pipelines.compat import ray_api
from pipelines.sweep.options import METRIC, MODE, POPULATION, Sweep
from pipelines.sweep.space import Param, SearchSpace
from pipelines.tracking import names

MEMBER = "member"  # the Tune config key holding a member's values
MUTABLE = ("lr_g", "lr_d", "beta1", "beta2", "label_smoothing", "ema", "n_dis")
QUANTILE = 0.25  # the quarter that copies and the quarter copied (Ray's default)
RESAMPLE = 0.25  # PBT: how often a perturbed value is drawn again instead of scaled


def mutable_params(space: SearchSpace) -> tuple[Param, ...]:
    """The space's parameters a population mutates: MUTABLE ones searched unconditionally
    (a conditional one is absent from some members) with numeric values. An EMA whose
    choices include 0 is structural: switching it on or off changes the sampler."""
    out = []
    for p in space.params:
        if p.name not in MUTABLE or p.when:
            continue
        values = p.choices if p.kind == "categorical" else (p.low, p.high)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        if p.name == "ema" and min(values) <= 0:
            continue
        out.append(p)
    return tuple(out)


def check_population(space: SearchSpace, opts: Sweep) -> None:
    """ConfigError (one line) when the space or flags cannot make a population sweep
    (nothing to check for another scheduler)."""
    if opts.scheduler not in POPULATION:
        return
    if not mutable_params(space):
        raise ConfigError(f"--scheduler {opts.scheduler} is invalid with {space.path}: it searches none of "
                          f"{', '.join(MUTABLE)} unconditionally with numeric values, so there is nothing to mutate")
    if opts.trials < 2:
        raise ConfigError(f"--trials {opts.trials} is invalid with --scheduler {opts.scheduler}: "
                          "a population needs at least 2 members (8 is a good start)")
    epochs = space.max_value("epochs")
    if not 1 <= opts.perturb_every < epochs:
        raise ConfigError(f"--perturb-every {opts.perturb_every} is invalid: must be from 1 to {epochs - 1} "
                          f"(below the space's {epochs} epochs)")
    if space.fixed.get("epochs") is None:
        raise ConfigError(f"--scheduler {opts.scheduler} is invalid with {space.path}: epochs is searched; "
                          "a population's members must stop at the same epochs (give epochs a fixed value)")
    if opts.warm_start:
        raise ConfigError(f"--warm-start is invalid with --scheduler {opts.scheduler}: "
                          "a population is drawn before any score exists")


def perturbation_epochs(space: SearchSpace, opts: Sweep) -> tuple[int, ...]:
    """The epochs where members stop, compare and exploit: every perturb_every, before the last."""
    return tuple(range(opts.perturb_every, space.max_value("epochs"), opts.perturb_every))


def initial_population(space: SearchSpace, opts: Sweep) -> list[dict[str, Any]]:
    """`opts.trials` member configs drawn from the space's define-by-run sampling by
    Optuna's QMC sampler (seeded: the same flags draw the same population)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # QMCSampler is experimental (optuna's ExperimentalWarning, not a deprecation)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(sampler=optuna.samplers.QMCSampler(seed=opts.seed, scramble=True,
                                                                       warn_independent_sampling=False))
        members = []
        for _ in range(opts.trials):
            trial = study.ask()
            members.append(space.suggest(trial))
            study.tell(trial, 0.0)
    return members


def param_space(space: SearchSpace, opts: Sweep) -> dict[str, Any]:
    from ray import tune

    return {MEMBER: tune.grid_search(initial_population(space, opts))}


def _bounds(p: Param) -> tuple[float, float]:
    if p.kind == "categorical":
        return float(min(p.choices)), float(max(p.choices))
    assert p.low is not None and p.high is not None
    return float(p.low), float(p.high)


def _mutation(p: Param) -> Any:
    """PBT's spec for one parameter: a range it scales within, or the list it steps along."""
    from ray import tune

    if p.kind == "categorical":
        return sorted(p.choices)
    if p.kind == "int":
        assert p.low is not None and p.high is not None
        return list(range(int(p.low), int(p.high) + 1, p.step or 1))
    low, high = _bounds(p)
    return tune.loguniform(low, high) if p.log else tune.uniform(low, high)


def clamp(config: dict[str, Any], bounds: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """PBT's scaling (x0.8, x1.2) stays inside the space: beta1 0.9 * 1.2 is no Adam beta."""
    values = dict(config[MEMBER])
    for key, (low, high) in bounds.items():
        if key in values:
            values[key] = min(max(values[key], low), high)
    return {**config, MEMBER: values}


class _ResyncsOnResume:
    """Mixed into PBT/PB2 for `sweep --resume`: Tune saves no scheduler state, so a
    resumed sweep's PBT starts afresh while its members restart from checkpoints of
    different epochs (the killed driver's round half done). Seeded from each member's last
    perturbation report, it holds the members that are ahead until the others reach their
    epoch: the first round after a resume compares every member at one epoch, as the
    others do, and no member jumps an epoch by copying one ahead of it."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]
        result = trial.run_metadata.last_result or {}
        epoch = result.get(names.PBT_EPOCH)
        if epoch is None or result.get(METRIC) is None:
            return  # a new member, or one that never reached a perturbation epoch
        ray_api.pbt_resync(self, trial, epoch, result[METRIC], result)  # PBT's own record: no public API
        if trial.status == "PENDING":
            # Tune starts every PENDING trial as resources allow; a PAUSED one only when
            # choose_trial_to_run picks it: the members behind first.
            trial.set_status("PAUSED")

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        trial = super().choose_trial_to_run(tune_controller)  # type: ignore[misc]
        if trial is not None:
            return trial
        trials = tune_controller.get_trials()
        waiting = [t for t in trials if t.status in ("PENDING", "PAUSED")]
        if waiting and not any(t.status == "RUNNING" for t in trials):
            # Every member waits at or past the next perturbation epoch and none trains: the
            # round there was done before the driver died; go on to the next one.
            ray_api.pbt_next_round(self, waiting)
            return super().choose_trial_to_run(tune_controller)  # type: ignore[misc]
        return None


class _SavesEachExploit:
    """Mixed into PBT/PB2: an exploit's checkpoint is in Tune's saved state at once (Ray
    leaves it out until the member's next result: compat.ray_api.pbt_exploit_saved), so a
    driver killed mid-round resumes each member that copied another from the checkpoint it
    copied, with the values it was given, as the member's run records it (sweep.member)."""

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        super()._exploit(tune_controller, trial, trial_to_clone)  # type: ignore[misc]
        ray_api.pbt_exploit_saved(trial)


def make_population_scheduler(space: SearchSpace, opts: Sweep) -> Any:
    """Synchronous PBT or PB2 on the FID-style score, timed by the perturbation epochs
    members report (PBT_EPOCH: only those reports carry it, so a member's other evals and
    its last report never trigger one)."""
    import random

    import numpy as np

    random.seed(opts.seed)  # PBT's choices (which donor, which factor) come from here ...
    # ... and PB2's and PBT's redraws from numpy's. Not from the seed itself: Optuna drew the
    # population's first member with a RandomState(seed), and a redraw of a value would
    # repeat that member's, draw for draw.
    np.random.seed(opts.seed + 1)
    params = mutable_params(space)
    bounds = {p.name: _bounds(p) for p in params}
    common: dict[str, Any] = dict(time_attr=names.PBT_EPOCH, metric=METRIC, mode=MODE,
                                  perturbation_interval=opts.perturb_every, quantile_fraction=QUANTILE,
                                  synch=True, require_attrs=False, log_config=False)
    resumable = __getattr__("ResumablePB2" if opts.scheduler == "pb2" else "ResumablePBT")
    if opts.scheduler == "pb2":
        return resumable(hyperparam_bounds={MEMBER: {k: list(v) for k, v in bounds.items()}}, **common)
    return resumable(hyperparam_mutations={MEMBER: {p.name: _mutation(p) for p in params}},
                        resample_probability=RESAMPLE,
                        custom_explore_fn=functools.partial(clamp, bounds=bounds), **common)


def quiet_tune_logs() -> None:
    """PBT warns once that a report lacks its time_attr (only perturbation epochs carry it,
    by design), and Tune that a member restored before it wrote progress.csv has none."""
    import logging

    logging.getLogger("ray.tune.schedulers.pbt").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.logger.logger").setLevel(logging.ERROR)


def member_values(config: dict[str, Any]) -> dict[str, Any]:
    """A member's values as it trains them: PB2 proposes floats, an int setting (n_dis)
    takes the nearest whole number."""
    values = dict(config[MEMBER])
    for key, v in values.items():
        default = getattr(RunConfig, key, None)
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(v, float):
            values[key] = round(v)
    return values




def __getattr__(name: str) -> Any:
    """ResumablePBT / ResumablePB2, built on first use: Ray's schedulers load only in a
    sweep (importing this module must not import Ray). Module-level names, so Tune's
    pickled tuner finds them again on `sweep --resume`."""
    if name in ("ResumablePBT", "ResumablePB2"):
        from ray.tune.schedulers import PopulationBasedTraining
        from ray.tune.schedulers.pb2 import PB2

        base = PopulationBasedTraining if name == "ResumablePBT" else PB2
        cls = type(name, (_SavesEachExploit, _ResyncsOnResume, base), {"__module__": __name__, "__qualname__": name})
        globals()[name] = cls
        return cls
    raise AttributeError(name)
