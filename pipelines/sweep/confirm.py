"""`gan-pipeline confirm --sweep NAME`: is the sweep's winner real? One trial is one seed,
and the same config over three seeds was seen to spread its FID by a third, more than the
gap between many trials. This trains the top trials' configs again with new seeds, on the
sweep's Ray with its resources and budget (no pruning: every seed trains its whole
budget), nested under the sweep's parent, and logs per config the mean and standard
deviation of `best_fid` over its confirmation seeds:

    on each confirming run   tags confirm_of = its trial's run id, confirm_seed = its seed
    on each confirmed trial  metrics confirm.best_fid_mean / confirm.best_fid_std / confirm.n
    on the parent            confirm/table.json (one row per config), confirm/mean_std.png,
                             tag sweep.confirmed, metrics confirm.best_fid_mean of the best

Three things keep the mean honest:
- The trial's own score is not in it. The trial was picked for having the sweep's best
  score, so that score is biased low (the winner's curse); it is shown beside the mean.
- A confirmation scores where its trial scored (config eval_at = the trial's scored
  epochs): a trial is scored at every ASHA rung and as its eval budget allowed, and
  `best_fid` is the best of those, so scoring more or fewer epochs moves it.
- Seeds never repeat: a second `confirm` trains seeds no earlier one used, and the mean
  pools every confirmation (n grows only with new information).

A population sweep (PBT, PB2) is refused: a member trained a schedule of values, changed
at each exploit from another member's weights, and no one config reproduces it.

`promote --sweep NAME` then ranks configs by that mean (registry.promote).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.config import ConfigError
from pipelines.errors import TrackingError
from pipelines.sweep.options import POPULATION
from pipelines.tracking import names

CONFIRM_UNIT = "confirm_unit"  # the one Tune param of a confirmation: a (trial, seed) as JSON
FOLDER = "{name}-confirm-{k}"  # its Tune folder, beside the sweep's
SCORE = names.BEST_FID


@dataclass
class Confirmed:
    """One config of the sweep: its trial and the runs that trained it again."""

    trial: Any
    runs: list[Any]  # its confirming runs, of every confirmation so far, by seed

    @property
    def selection(self) -> float:
        """The trial's own best_fid: what it was picked on (biased low), not in the mean."""
        return float(self.trial.data.metrics.get(SCORE, math.nan))

    @property
    def values(self) -> list[float]:
        """best_fid of each confirming run that finished with one (a failed seed has none)."""
        out = []
        for r in self.runs:
            v = r.data.metrics.get(SCORE)
            if r.info.status == "FINISHED" and v is not None and math.isfinite(v):
                out.append(float(v))
        return out

    @property
    def seeds(self) -> list[int]:
        return [int(r.data.tags[names.CONFIRM_SEED]) for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1): a handful of seeds."""
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def row(self) -> dict[str, Any]:
        return {"trial": self.trial.info.run_name, "run_id": self.trial.info.run_id,
                "selection_best_fid": self.selection, f"{SCORE}_mean": self.mean, f"{SCORE}_std": self.std,
                "n": len(self.values), "values": self.values, "seeds": self.seeds}


@dataclass
class ConfirmOutcome:
    sweep: str
    experiment_id: str
    parent_run_id: str
    configs: list[Confirmed]  # best confirmed mean first
    seconds: float
    tracking_uri: str


def check_counts(top: int, seeds: int) -> None:
    if top < 1:
        raise ConfigError(f"--top {top} is invalid: must be a positive number of trials to confirm")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} is invalid: must be a positive number of new seeds per config")


def ranked_trials(client: Any, parent: Any) -> list[Any]:
    """The sweep's FINISHED trials with a finite best_fid, best first."""
    from pipelines.sweep.report import child_runs

    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    done = [r for r in runs if r.info.status == "FINISHED" and math.isfinite(r.data.metrics.get(SCORE, math.nan))]
    return sorted(done, key=lambda r: r.data.metrics[SCORE])


def confirm_sweep(sweep: str, top: int = 3, seeds: int = 3, ray_address: str | None = None) -> ConfirmOutcome:
    """Train the sweep's `top` trials again with `seeds` new seeds each; every check
    (counts, the sweep, its finished trials, its saved settings) before anything runs."""
    from pipelines.distributed.connect import check_reachable
    from pipelines.distributed.connect import ray_address as resolve_address
    from pipelines.sweep.parent import saved_settings
    from pipelines.tracking.lease import holder
    from pipelines.tracking.store import absolute_uri, client_for, tracking_uri
    from pipelines.tracking.sweeps import find_sweep

    started = time.time()
    check_counts(top, seeds)
    uri = absolute_uri(tracking_uri())
    client = client_for(uri)
    parent = find_sweep(client, sweep)
    name = parent.data.tags.get(names.SWEEP_NAME, sweep)
    if holder(parent):
        raise TrackingError(f"--sweep {name}: the sweep is running: confirm it once it has finished")
    scheduler = parent.data.params.get("sweep.scheduler", "")
    if scheduler in POPULATION:
        raise ConfigError(f"--sweep {name}: a population sweep (--scheduler {scheduler}) cannot be confirmed: each "
                          "member trained a schedule of values changed at every exploit from another member's "
                          "weights, which no single config with a new seed reproduces; confirm an asha or none sweep")
    trials = ranked_trials(client, parent)
    if not trials:
        raise TrackingError(f"--sweep {name}: no finished trial with a {SCORE} to confirm")
    chosen = trials[:top]
    folder = parent.data.tags.get(names.SWEEP_STORAGE, "")
    opts, space = saved_settings(parent, ray_address, f"--sweep {name}: its saved settings are gone "
                                 f"({folder}/sweep.json): confirm on the machine and folder the sweep ran in")
    earlier = confirmed(client, parent, [t.info.run_id for t in chosen])
    units = [_unit(client, c.trial, space, seed, scored_epochs(client, c.trial.info.run_id))
             for c in earlier for seed in new_seeds(c.trial, c.seeds, seeds)]
    check_reachable(resolve_address(opts.ray_address))
    from pipelines.sweep.driver import check_space_for_sweep

    data = check_space_for_sweep(space, opts)
    print(f"confirm {name}: {len(chosen)} configs x {seeds} new seeds = {len(units)} runs, "
          f"{opts.concurrency} at a time; parent run {parent.info.run_id}", file=sys.stderr)
    _train(units, data, opts, space, uri, parent)
    configs = confirmed(client, parent, [t.info.run_id for t in chosen])
    _record(client, parent, configs, top, seeds)
    return ConfirmOutcome(name, parent.info.experiment_id, parent.info.run_id, configs, time.time() - started, uri)


def confirmed(client: Any, parent: Any, trial_ids: list[str]) -> list[Confirmed]:
    """Each trial with every run that confirmed it (this and earlier confirmations), best
    confirmed mean first (configs with no confirmed value last)."""
    from pipelines.sweep.report import confirm_runs

    again = confirm_runs(client, parent.info.experiment_id, parent.info.run_id)
    out = []
    for run_id in trial_ids:
        trial = client.get_run(run_id)
        mine = [r for r in again if r.data.tags[names.CONFIRM_OF] == run_id]
        out.append(Confirmed(trial, sorted(mine, key=lambda r: int(r.data.tags[names.CONFIRM_SEED]))))
    return sorted(out, key=lambda c: c.mean if math.isfinite(c.mean) else math.inf)


def new_seeds(trial: Any, used: list[int], count: int) -> list[int]:
    """`count` seeds neither the trial nor an earlier confirmation of it trained: the
    lowest ones after the trial's own."""
    taken = {int(trial.data.params.get("seed", 0)), *used}
    out: list[int] = []
    seed = int(trial.data.params.get("seed", 0))
    while len(out) < count:
        seed += 1
        if seed not in taken:
            out.append(seed)
    return out


def scored_epochs(client: Any, run_id: str) -> str:
    """The epochs the run was scored after, as config eval_at ("1,2,4"): the epoch each of
    its `fid` values was logged with (an eval logs both at its step)."""
    epoch_at = {m.step: int(m.value) for m in client.get_metric_history(run_id, names.EPOCH)}
    scored = {epoch_at[m.step] for m in client.get_metric_history(run_id, names.FID) if m.step in epoch_at}
    return ",".join(str(e) for e in sorted(scored))


def _unit(client: Any, trial: Any, space: Any, seed: int, eval_at: str) -> str:
    """One confirming run as Tune's param: the trial's resolved config (its config.yaml)
    with a new seed, scored after the epochs the trial was scored after, less the searched
    parameters the trial did not sample (so it logs the params its trial logged), its run
    id and the name its run gets."""
    from pipelines.tracking.history import logged_config

    config = logged_config(client, trial.info.run_id)
    if not isinstance(config, dict):
        raise TrackingError(f"--sweep: trial {trial.info.run_name} has no {names.CONFIG_FILE} to train again")
    inactive = {p.name for p in space.params} - set(trial.data.params)
    config = {k: v for k, v in config.items() if k not in inactive} | {"seed": seed, "eval_at": eval_at}
    return json.dumps({"trial": trial.info.run_id, "seed": seed, "config": config,
                       "name": f"{trial.info.run_name} seed {seed}"})


def run_confirm_trial(config: dict[str, Any], data: Any, ctx: Any) -> None:
    """The Tune trainable of a confirmation: one sweep trial (trial.run_trial) of the
    unit's config, tagged with the trial it confirms."""
    from pipelines.sweep.trial import run_trial

    unit = json.loads(config[CONFIRM_UNIT])
    run_trial(unit["config"], data, ctx, run_name=unit["name"],
              tags={names.CONFIRM_OF: unit["trial"], names.CONFIRM_SEED: str(unit["seed"])})


def _train(units: list[str], data: Any, opts: Any, space: Any, uri: str, parent: Any) -> None:
    from ray import tune

    from pipelines.sweep.closing import close_open_trials, tune_outcomes
    from pipelines.sweep.driver import TRIAL_RETRIES, sweep_services
    from pipelines.sweep.report import confirm_runs
    from pipelines.sweep.tuning import make_trainable, progress_callback, trial_dirname

    root = Path(opts.storage_path).expanduser().resolve()
    k = 1
    while (root / FOLDER.format(name=opts.name, k=k)).exists():
        k += 1
    with sweep_services(opts, uri, space, parent.info.experiment_id, parent.info.run_id, rungs=()) as (ctx, client):
        tuner = tune.Tuner(
            make_trainable(data, ctx, opts, function=run_confirm_trial),
            param_space={CONFIRM_UNIT: tune.grid_search(units)},
            tune_config=tune.TuneConfig(max_concurrent_trials=opts.concurrency, reuse_actors=True,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=FOLDER.format(name=opts.name, k=k), storage_path=str(root), verbose=0,
                                      callbacks=[progress_callback(len(units))],
                                      failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES)),
        )
        ended = tune_outcomes(tuner.fit())
        # This confirmation's runs that never closed (their process died); earlier ones are history.
        mine = [r for r in confirm_runs(client, parent.info.experiment_id, parent.info.run_id)
                if r.data.tags.get(names.TRIAL_ID) in ended]
        close_open_trials(client, mine, ended)


def _record(client: Any, parent: Any, configs: list[Confirmed], top: int, seeds: int) -> None:
    """Per config on its trial, the table and plot on the parent."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    for c in configs:
        figures = {f"{SCORE}_mean": c.mean, f"{SCORE}_std": c.std, "n": float(len(c.values))}
        client.log_batch(c.trial.info.run_id, metrics=[Metric(f"{names.CONFIRM_PREFIX}{k}", v, now, 0)
                                                       for k, v in figures.items() if math.isfinite(v)])
    client.log_dict(parent.info.run_id, {"rows": [c.row() for c in configs]}, "confirm/table.json")
    client.log_figure(parent.info.run_id, _plot(configs), "confirm/mean_std.png")
    client.set_tag(parent.info.run_id, names.SWEEP_CONFIRMED, f"top {top} x {seeds} seeds")
    if configs and math.isfinite(configs[0].mean):
        client.log_metric(parent.info.run_id, f"{names.CONFIRM_PREFIX}{SCORE}_mean", configs[0].mean, now)


def _plot(configs: list[Confirmed]) -> Any:
    """Mean +- std of best_fid per config, each seed's value as a dot, best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(configs) + 1.5))
    for y, c in enumerate(reversed(configs)):
        ax.errorbar(c.mean, y, xerr=0 if math.isnan(c.std) else c.std, fmt="o", capsize=4, color="C0",
                    label="confirmation mean +- std" if y == 0 else None)
        ax.plot(c.values, [y] * len(c.values), ".", color="C1", alpha=0.7, label="each new seed" if y == 0 else None)
        ax.plot([c.selection], [y], "x", color="C3", label="the trial (selection; not in the mean)" if y == 0 else None)
    ax.set_yticks(range(len(configs)), [c.trial.info.run_name for c in reversed(configs)])
    ax.set_xlabel(f"{SCORE} over confirmation seeds")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


__all__ = ["CONFIRM_UNIT", "ConfirmOutcome", "Confirmed", "confirm_sweep", "confirmed", "new_seeds",
           "run_confirm_trial", "scored_epochs"]
