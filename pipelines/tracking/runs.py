"""A run's lifecycle, the same for a local run, a Ray Train run and a sweep trial: open
(or adopt `mlflow run`'s) run, log the resolved config, guard the training so any
failure marks the run, finish it with its GIF and generator.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from torch import nn

from gan.config import RunConfig
from gan.health import HEALTH_PREFIX
from pipelines.errors import TrackingError, TrackingLost
from pipelines.tracking import names
from pipelines.tracking.lease import check_free
from pipelines.tracking.models import FINAL, log_model, model_with_role
from pipelines.tracking.pictures import log_progress_gif
from pipelines.tracking.store import config_params


def find_resumable(client: Any, experiment_id: str, run_id: str | None, extend_to: int | None = None) -> Any:
    """The run `--resume [RUN_ID]` may continue, by the rules a user can rely on:

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
    if run.data.tags.get(names.SWEEP_ROLE) == "parent":
        raise TrackingError(f"--resume {run.info.run_id}: it is a sweep's parent run: continue the sweep "
                            f"with gan-pipeline sweep --resume {run.data.tags.get(names.SWEEP_NAME, '')}")
    if run.info.status == "FINISHED":
        done = int(run.data.params.get("epochs", 0))
        if not extend_to or extend_to <= done:
            raise TrackingError(f"--resume {run.info.run_id}: the run is FINISHED ({done} epochs): pass "
                                f"--epochs N with N > {done} to extend it")
    check_free(run)
    return run


def _continuable(run: Any) -> bool:
    reason = run.data.tags.get(names.STOPPED_REASON, "")
    return run.data.tags.get(names.SWEEP_ROLE) != "parent" and not reason.startswith(("tune:", "health:"))


def clear_stale_tags(client: Any, run: Any) -> None:
    """A resumed run starts clean: the error or stop reason of its last life is history."""
    for key in (names.ERROR, names.STOPPED_REASON):
        if key in run.data.tags:
            client.delete_tag(run.info.run_id, key)


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


@contextlib.contextmanager
def run_guard(client: Any, run_id: str) -> Iterator[None]:
    """Any exception inside marks the run KILLED (Ctrl-C) or FAILED (with the error) and
    propagates; what was logged before it stays."""
    try:
        yield
    except TrackingLost:  # the store is away (or the run someone else's): nothing to mark
        raise
    except KeyboardInterrupt:
        close_run(client, run_id, "KILLED", "interrupted by the user")
        raise
    except BaseException as e:
        close_run(client, run_id, "FAILED", f"{type(e).__name__}: {e}")
        raise


def log_run_config(client: Any, run_id: str, cfg: RunConfig, extra: dict[str, Any],
                   omit: tuple[str, ...] = ()) -> None:
    """The resolved config (plus where it ran, less `omit`) as params, and all of it as
    config.yaml."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in config_params(cfg, extra, omit).items()])
    client.log_text(run_id, cfg.to_yaml(), names.CONFIG_FILE)


def finish_run(client: Any, run_id: str, cfg: RunConfig, generator: nn.Module,
               frames: list[tuple[int, Any]], image_shape: tuple[int, ...], *, epoch: int, step: int,
               stopped: str | None = None) -> str:
    """The end of a good run: progress GIF, FINISHED. Returns the final model's URI.

    The final generator was logged at the last eval (MlflowCallbacks.on_scored) with its
    scores; a run without one (no eval at its end, or resumed past it) logs `generator`."""
    log_progress_gif(client, run_id, frames)
    final = model_with_role(client, run_id, FINAL)
    model_id = final.model_id if final else log_model(client, run_id, cfg, generator, image_shape,
                                                      role=FINAL, epoch=epoch, step=step)
    if stopped:
        client.set_tag(run_id, names.STOPPED_REASON, stopped)
    client.set_terminated(run_id, "FINISHED")
    return f"models:/{model_id}"


def end_early(client: Any, run_id: str, frames: list[tuple[int, Any]], reason: str) -> None:
    """A run stopped before its budget (pruned, diverged): GIF, reason, KILLED. Never
    raises: the caller (a sweep trial) goes on, and the driver closes stale runs."""
    import sys

    try:
        log_progress_gif(client, run_id, frames)
        client.set_tag(run_id, names.STOPPED_REASON, reason)
        client.set_terminated(run_id, "KILLED")
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not close run {run_id}: {e}", file=sys.stderr)


def fail_diverged(client: Any, run_id: str, frames: list[tuple[int, Any]], reason: str) -> None:
    """A run the health guard stopped: GIF, stopped_reason, FAILED. What it logged and its
    checkpoints (all taken before the divergence was confirmed) stay; no final model."""
    log_progress_gif(client, run_id, frames)
    client.set_tag(run_id, names.STOPPED_REASON, reason)
    close_run(client, run_id, "FAILED", f"diverged: {reason}")


def diverged_reason(client: Any, run_id: str) -> str | None:
    """The health guard's reason when a run (a Ray Train rank 0 wrote it) diverged."""
    reason = client.get_run(run_id).data.tags.get(names.STOPPED_REASON, "")
    return reason if reason.startswith(HEALTH_PREFIX) else None


def close_run(client: Any, run_id: str, status: str, message: str) -> None:
    """Mark a run ended without losing what is queued; never mask the original error."""
    try:
        client.set_tag(run_id, names.ERROR, message[:5000])
        client.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001, S110 - the original exception matters more
        pass
