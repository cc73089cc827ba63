"""A sweep's parent run found from what a user types: its name (the sweep tags, in any
experiment) or its run id; a mistyped name is answered with the sweeps that exist. Read by
`promote --sweep` and `confirm --sweep`."""

from __future__ import annotations

from typing import Any

from pipelines.errors import TrackingError
from pipelines.tracking import names
from pipelines.tracking.store import is_not_found

PARENT_ROLE = names.SWEEP_PARENT
SWEEPS_LISTED = 5


def find_sweep(client: Any, sweep: str) -> Any:
    """The sweep's parent run, by run id or by its sweep tags. Only the tags: a run is
    named by whoever starts it, and each trial carries the sweep's name too."""
    try:
        run = client.get_run(sweep)
    except Exception as e:  # noqa: BLE001 - not a run id (or not found): try the name next
        if not is_not_found(e):
            raise
    else:
        if run.data.tags.get(names.SWEEP_ROLE) != PARENT_ROLE:
            raise TrackingError(f"--sweep {sweep!r}: that run is not a sweep's parent run "
                                f"(it has no {names.SWEEP_ROLE}={PARENT_ROLE} tag)")
        return run
    runs = _sweep_parents(client, f" and tags.`{names.SWEEP_NAME}` = '{sweep}'", 1)
    if runs:
        return runs[0]
    raise TrackingError(f"--sweep {sweep!r}: no sweep named {sweep!r}; {_known_sweeps(client)}")


def _sweep_parents(client: Any, where: str, max_results: int) -> list[Any]:
    """Sweep parent runs in any experiment matching `where` too, newest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`{names.SWEEP_ROLE}` = '{PARENT_ROLE}'{where}"
    return list(client.search_runs(experiments, query, order_by=["attributes.start_time DESC"],
                                   max_results=max_results))


def _known_sweeps(client: Any) -> str:
    """The newest few sweep names, so a mistyped name is one look away from the right one."""
    found = [r.data.tags.get(names.SWEEP_NAME, r.info.run_id) for r in _sweep_parents(client, "", 100)]
    unique = list(dict.fromkeys(found))
    if not unique:
        return "there is no sweep in this store"
    more = ", ..." if len(unique) > SWEEPS_LISTED else ""
    return "sweeps here (newest first): " + ", ".join(unique[:SWEEPS_LISTED]) + more


