"""The trial runs a sweep's driver must close itself, once Tune is done: those whose own
process could not. A trial closes its run as it ends (trial.py); when its process dies
first (its driver killed, its node lost, a reused actor given up on), the run stays
RUNNING, and a resumed sweep's driver is the one that finds it:

    pruned  Tune stopped the trial (its saved state says so), its process died before it
            closed the run: closed as the trial would have (reason, GIF, KILLED); a
            population member (never pruned: paused, or stopped by the driver) says so
    lost    Tune's saved state never knew the trial (the driver died first): the restored
            sweep ran a new trial in its place; tagged sweep.lost, closed with its GIF
    dead    the trial errored and its process died: KILLED, saying so
    runless Tune errored the trial before its function ran (so it made no run): a FAILED
            run says so, so a sweep of N trials always shows N runs
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.sweep.tune_report import STOPPED_BY_DRIVER, member_unfinished_reason, pruned_reason
from pipelines.tracking import names
from pipelines.tracking.ending import close_early
from pipelines.tracking.exploits import is_member
from pipelines.tracking.history import logged_grids

LOST_REASON = "lost: the driver died before Tune recorded this trial; a new trial took its place"
RUNLESS_REASON = "tune: the trial failed before it started"
DEAD_REASON = "tune: the trial's process ended before it closed its run"


@dataclass(frozen=True)
class Ended:
    """How Tune left a trial: with an error or not, and the last epoch it reported."""

    errored: bool
    epoch: int | None
    error: str = ""  # the first line of Tune's error
    config: dict[str, Any] = field(default_factory=dict)  # what Tune sampled for it


def tune_outcomes(grid: Any) -> dict[str, Ended]:
    """{trial id: Ended} of every trial in Tune's results (a ResultGrid)."""
    out = {}
    for i in range(len(grid)):
        result = grid[i]
        epoch = (result.metrics or {}).get(names.EPOCH)
        error = (str(result.error).strip().splitlines() or [""])[0] if result.error is not None else ""
        out[Path(result.path).name.removeprefix("trial_")] = Ended(
            result.error is not None, int(epoch) if epoch is not None else None, error[:300],
            dict(result.config or {}))
    return out


def record_runless_trials(client: Any, experiment_id: str, parent_id: str, sweep_name: str, runs: list[Any],
                          ended: dict[str, Ended], searched: tuple[str, ...]) -> None:
    """A FAILED run for each trial Tune ended without its function ever running (so it
    made none): the sweep's N trials are N runs, each saying how it ended."""
    from mlflow.entities import Param

    from pipelines.sweep.naming import trial_name

    have = {r.data.tags.get(names.TRIAL_ID) for r in runs}
    number = len(runs)
    for trial_id, outcome in ended.items():
        if trial_id in have or not outcome.errored:
            continue
        number += 1
        sampled = {k: outcome.config[k] for k in searched if k in outcome.config}
        run = client.create_run(experiment_id, run_name=trial_name(number, sampled), tags={
            names.PARENT_RUN: parent_id, names.TRIAL_ID: trial_id, names.SWEEP_NAME: sweep_name,
            names.STOPPED_REASON: f"{RUNLESS_REASON}: {outcome.error}"[:5000]})
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sampled.items()])
        client.set_terminated(run.info.run_id, "FAILED")


def close_open_trials(client: Any, runs: list[Any], ended: dict[str, Ended], population: bool = False) -> None:
    """Close the runs Tune is done with that are still open (module doc). A population
    member (`population`: the sweep's trials are PBT/PB2 members; else its run says so)
    is never pruned: one left open was paused, or lost its process, when the sweep
    ended, and is closed saying that."""
    for r in runs:
        tags = r.data.tags
        outcome = ended.get(tags.get(names.TRIAL_ID, ""))
        if outcome is None:
            if tags.get(names.SWEEP_LOST) != "true":
                client.set_tag(r.info.run_id, names.SWEEP_LOST, "true")
                if r.info.status == "RUNNING":
                    _end_early(client, r.info.run_id, LOST_REASON)
                else:  # it had ended on its own before the driver died: only say what happened
                    client.set_tag(r.info.run_id, names.STOPPED_REASON, LOST_REASON)
        elif r.info.status != "RUNNING":
            continue
        elif outcome.errored:
            client.set_tag(r.info.run_id, names.STOPPED_REASON, DEAD_REASON)
            client.set_terminated(r.info.run_id, "KILLED")
        else:
            # Tune ended it without an error, yet the trial never closed its run: Tune stopped
            # it, and its process died before it could finish (trial.py closes it otherwise).
            reason = tags.get(names.STOPPED_REASON, "")
            if not reason.startswith(("tune:", STOPPED_BY_DRIVER)):  # the trial's own, if it got that far
                logged = int(r.data.metrics.get(names.EPOCH, 0))
                if population or is_member(r):  # the epoch it got to (its hand-over may not have reached Tune)
                    reason = member_unfinished_reason(max(logged, outcome.epoch or 0))
                else:  # the epoch ASHA judged it at
                    reason = pruned_reason(outcome.epoch if outcome.epoch is not None else logged)
            _end_early(client, r.info.run_id, reason)


def _end_early(client: Any, run_id: str, reason: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        close_early(client, run_id, logged_grids(client, run_id, tmp), reason)
