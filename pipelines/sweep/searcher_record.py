"""What a sweep's live searcher told Optuna of each trial, written to the trial's MLflow run
as Tune tells it, so that a later searcher seeded with the trial (seeding.py: `--resume
NAME --trials N`, `--warm-start NAME`) holds it as the live one did.

The run's own metrics cannot say it: Ray's OptunaSearch (ray 2.60,
tune/search/optuna/optuna_search.py) reports each result Tune hands it at step
`training_iteration` (on_trial_result), and Tune does not hand it the result its scheduler
stops the trial at (tune/execution/tune_controller.py, _process_trial_result), which may be
a finished trial's last one too (an ASHA rung at the final epoch); a trial Tune retried
reports its first steps again, which Optuna ignores. At the end it tells COMPLETE with the
last result's metric (stop_trial: ASHA-stopped trials included), FAIL for a trial Tune
errored (_process_trial_failure: no result), PRUNED for one stopped before it reported;
a NaN value (a diverged trial) makes Optuna's tell raise, which OptunaSearch logs, and the
trial stays RUNNING in the study.

Tune calls its callbacks right after its searcher, with the same result and trial, so this
callback records exactly that: names.SEARCHER_FID at each step reported, names.SEARCHER_TOLD
(and names.SEARCHER_VALUE) at the end. A trial that failed before its function made a run
has nothing to write to; seeding.py reads it from the run closing.py makes for it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from ray.tune import Callback

from pipelines.sweep.options import METRIC, POPULATION
from pipelines.tracking import names

TRAINING_ITERATION = "training_iteration"  # ray.tune.result.TRAINING_ITERATION: the step Optuna gets

# The store as this driver reaches it, by sweep parent run: Tune pickles its callbacks with
# the experiment, and a restored sweep's record was pickled with its first driver's address
# (a private MLflow server, gone with that driver).
_reach: dict[str, str] = {}


def reach_store(parent_run_id: str, tracking_uri: str) -> None:
    """Where this driver's records of sweep `parent_run_id` go (before Tune runs its trials)."""
    _reach[parent_run_id] = tracking_uri


def told_at_end(status: str, last_result: dict[str, Any] | None, errored: bool) -> tuple[str, float | None]:
    """(state, value) as OptunaSearch.on_trial_complete leaves the trial in its study, for a
    trial Tune stops in `status` with `last_result` (Tune passes the last result only for a
    RUNNING trial), or errors."""
    if errored:
        return "FAIL", None  # _process_trial_failure: on_trial_complete(error=True), no result
    value = (last_result or {}).get(METRIC) if status == "RUNNING" else None
    if value is None:
        return "PRUNED", None
    if math.isnan(value):
        return "RUNNING", None  # study.tell refuses NaN; OptunaSearch logs it and moves on
    return "COMPLETE", float(value)


class SearcherRecord(Callback):
    """Records on each trial's run what the sweep's searcher was told (the module doc).
    Tune pickles its callbacks with the experiment: only the store's address travels."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self._client: Any = None
        self._runs: dict[str, str] = {}  # Tune trial id -> its run id
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        # Tune marks the result its scheduler stops the trial at `done` before it calls
        # callbacks, and hands that one to the searcher as the final value only.
        if result.get("done") or METRIC not in result:
            return
        value, step = float(result[METRIC]), int(result[TRAINING_ITERATION])
        self._write(trial, lambda client, run_id: client.log_metric(run_id, names.SEARCHER_FID, value, step=step))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Called before Tune marks the trial TERMINATED: its status is the one stop_trial read.
        self._told(trial, *told_at_end(trial.status, trial.last_result, errored=False))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._told(trial, *told_at_end(trial.status, None, errored=True))

    def _told(self, trial: Any, state: str, value: float | None) -> None:
        def write(client: Any, run_id: str) -> None:
            if value is not None:
                client.log_metric(run_id, names.SEARCHER_VALUE, value)
            client.set_tag(run_id, names.SEARCHER_TOLD, state)

        self._write(trial, write)

    def _write(self, trial: Any, write: Any) -> None:
        # A record that cannot be written costs only its exactness (seeding.py then reads
        # the run's own metrics): the sweep goes on.
        try:
            run_id = self._run_of(trial.trial_id)
            if run_id is not None:
                write(self.client, run_id)
        except Exception as e:  # noqa: BLE001 - the tracking server away, or a run deleted
            if not self._warned:
                self._warned = True
                print(f"note: what the searcher was told of trial {trial.trial_id} is not recorded "
                      f"({type(e).__name__}: {e}); a later seeding reads its run's own metrics", file=sys.stderr)

    @property
    def client(self) -> Any:
        if self._client is None:
            from pipelines.tracking.store import client_for

            self._client = client_for(_reach.get(self.parent_run_id, self.tracking_uri))
        return self._client

    def _run_of(self, trial_id: str) -> str | None:
        if trial_id not in self._runs:
            found = self.client.search_runs(
                [self.experiment_id], f"tags.`{names.PARENT_RUN}` = '{self.parent_run_id}' and "
                                      f"tags.`{names.TRIAL_ID}` = '{trial_id}'", max_results=1)
            if not found:
                return None  # not made yet (a trial that failed before its function ran)
            self._runs[trial_id] = found[0].info.run_id
        return self._runs[trial_id]


def searcher_record(opts: Any, tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[SearcherRecord]:
    """The record of a sweep that has a searcher (a population has none): its Tune callbacks."""
    return [] if opts.scheduler in POPULATION else [SearcherRecord(tracking_uri, experiment_id, parent_run_id)]
