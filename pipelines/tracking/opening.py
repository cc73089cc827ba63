"""Which MLflow run a command trains into: a new one, the one `mlflow run` made for this
process, or, with `--resume`, one it may continue by rules a user can rely on. Finding
the run is here; living in it (lease, restore, close) is tracking.runs."""

from __future__ import annotations

import os
from typing import Any

from pipelines.errors import TrackingError
from pipelines.tracking import names
from pipelines.tracking.lease import check_free
from pipelines.tracking.outbox import Outbox


def find_resumable(client: Any, experiment_id: str, run_id: str | None, extend_to: int | None = None) -> Any:
    """The run `--resume [RUN_ID]` may continue:

    - no RUN_ID: the newest unfinished run of the experiment, never a pruned or diverged
      sweep trial or a sweep's parent (those only by id);
    - a FINISHED run only with a larger --epochs (`extend_to`), which extends it;
    - never a run whose lease is fresh (someone is still training it)."""
    if run_id and run_id != "latest":
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - MlflowException for an unknown id
            raise TrackingError(f"--resume {run_id}: no such MLflow run in this store") from None
    else:
        runs = client.search_runs([experiment_id], "attributes.status != 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=200)
        runs = [r for r in runs if _continuable(r)]
        if not runs:
            raise TrackingError("--resume: no unfinished run in this experiment to continue (pruned or "
                                "diverged sweep trials are resumed only by id: --resume RUN_ID)")
        run = runs[0]
    if run.data.tags.get(names.SWEEP_ROLE) == names.SWEEP_PARENT:
        raise TrackingError(f"--resume {run.info.run_id}: it is a sweep's parent run: continue the sweep "
                            f"with gan-pipeline sweep --resume {run.data.tags.get(names.SWEEP_NAME, '')}")
    if run.info.status == "FINISHED":
        done = int(run.data.params.get("epochs", 0))
        if not extend_to or extend_to <= done:
            raise TrackingError(f"--resume {run.info.run_id}: the run is FINISHED ({done} epochs): pass "
                                f"--epochs N with N > {done} to extend it")
    check_free(run)
    Outbox(run.info.run_id).check_writer_gone()  # before the lease is taken: nothing of its run is touched
    return run


def _continuable(run: Any) -> bool:
    reason = run.data.tags.get(names.STOPPED_REASON, "")
    return run.data.tags.get(names.SWEEP_ROLE) != names.SWEEP_PARENT and not reason.startswith(("tune:", "health:"))


def adopted_run(client: Any) -> Any | None:
    """The run `mlflow run` created for this process (MLFLOW_RUN_ID), if any and still open."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a stale id from another store: ignore it
        return None
    return run if run.info.status == "RUNNING" else None


def open_run(client: Any, experiment_id: str, run_name: str | None,
             tags: dict[str, str]) -> tuple[str, str]:
    """A new run, or under `mlflow run` the project's own run: (run_id, experiment_id)."""
    project_run = adopted_run(client)
    if project_run is None:
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id, experiment_id
    for k, v in tags.items():
        client.set_tag(project_run.info.run_id, k, v)
    return project_run.info.run_id, project_run.info.experiment_id
