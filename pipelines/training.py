"""One tracked training run, in-process (world size 1, no Ray start).

Order matters: everything a user can get wrong (config, data, store, model size) is
checked before the MLflow run exists, so bad input never leaves a half-created run;
after that, any failure marks the run FAILED with the error and keeps what was logged.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from gan.config import RunConfig, make_config
from gan.data import ImageData, load_dataset
from gan.models import build_models
from gan.train import TrainResult, check_batch, resolve_device, train
from pipelines.tracking import (
    MlflowCallbacks,
    TrackingError,
    check_writable,
    client_for,
    config_params,
    ensure_experiment,
    environment_tags,
    last_logged_step,
    latest_checkpoint,
    log_generator,
    log_progress_gif,
    logged_grids,
    tracking_uri,
)

DEFAULT_EXPERIMENT = "gan-pipelines"


@dataclass
class RunOutcome:
    run_id: str
    experiment_id: str
    result: TrainResult
    model_uri: str


def prepare(cfg: RunConfig, world_size: int = 1, check_device: bool = True) -> ImageData:
    """Load the data and dry-build the models: every user error surfaces here. A Ray
    driver passes check_device=False: its workers, not it, hold the GPUs."""
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
    check_batch(cfg, len(data), world_size)
    build_models(cfg, data.shape)
    if check_device:
        resolve_device(cfg.device)
    return data


def find_resumable(client: Any, experiment_id: str, run_id: str | None) -> str:
    """`run_id` if given, else the newest unfinished run of the experiment."""
    if run_id and run_id != "latest":
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - MlflowException for an unknown id
            raise TrackingError(f"--resume {run_id}: no such MLflow run in this store") from None
        return run.info.run_id
    runs = client.search_runs(
        [experiment_id], "attributes.status != 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise TrackingError("--resume: no unfinished run in this experiment to continue")
    return runs[0].info.run_id


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


def run_local(
    cfg: RunConfig,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    resume: str | None = None,
    progress: bool | None = None,
) -> RunOutcome:
    """Train in this process and record one MLflow run (or continue one with `resume`)."""
    if progress is None:
        progress = sys.stderr.isatty()
    uri = tracking_uri()
    check_writable(uri)
    if not resume:
        # Every user error surfaces before the store is even opened. The evaluator is
        # built here too: a backbone the dataset cannot use (the classifier on an
        # unlabelled folder) is bad input, not a failed run.
        data = prepare(cfg)
        device = resolve_device(cfg.device)
        evaluator = build_evaluator(cfg, data, device)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, experiment)
    state, floor, frames = None, 0, []
    if resume:
        run_id = find_resumable(client, experiment_id, resume)
        with tempfile.TemporaryDirectory() as tmp:
            state = latest_checkpoint(client, run_id, tmp)
            if state is None:
                raise TrackingError(f"--resume: run {run_id} has no checkpoint to continue from")
            frames = logged_grids(client, run_id, tmp)
        cfg = make_config(state["config"])  # the run's own config reproduces it
        floor = last_logged_step(client, run_id)
        data = prepare(cfg)
        evaluator = build_evaluator(cfg, data, resolve_device(cfg.device))
        client.update_run(run_id, status="RUNNING")
        print(f"resuming run {run_id} from epoch {state['epoch']} (step {state['step']})", file=sys.stderr)
    else:
        tags = environment_tags(cfg.dataset, str(device))
        run_id, experiment_id = open_run(client, experiment_id, run_name, tags)
    return execute(client, experiment_id, run_id, cfg, data, state=state, floor=floor,
                   frames=frames, progress=progress, fresh=state is None, evaluator=evaluator)


def execute(
    client: Any, experiment_id: str, run_id: str, cfg: RunConfig, data: ImageData, *,
    state: dict[str, Any] | None = None, floor: int = 0, frames: list | None = None,
    progress: bool = True, fresh: bool = True, evaluator: Any = None,
) -> RunOutcome:
    """Run the loop into an existing MLflow run; mark it FINISHED, FAILED or KILLED."""
    device = resolve_device(cfg.device)
    with run_guard(client, run_id):
        if fresh:
            where = {"world_size": 1, "device_type": str(device), "num_workers": 1}
            log_run_config(client, run_id, cfg, where)
        callbacks = MlflowCallbacks(client, run_id, floor=floor, frames=frames)
        evaluator = evaluator or build_evaluator(cfg, data, device)
        result = train(cfg, data, callbacks, evaluator=evaluator, resume=state, device=device, progress=progress)
        model_uri = finish_run(
            client, run_id, cfg, result.generator, callbacks.frames, result.stopped
        )
        return RunOutcome(run_id, experiment_id, result, model_uri)


@contextlib.contextmanager
def run_guard(client: Any, run_id: str) -> Iterator[None]:
    """Any exception inside marks the run KILLED (Ctrl-C) or FAILED (with the error) and
    propagates; what was logged before it stays."""
    try:
        yield
    except KeyboardInterrupt:
        _close(client, run_id, "KILLED", "interrupted by the user")
        raise
    except BaseException as e:
        _close(client, run_id, "FAILED", f"{type(e).__name__}: {e}")
        raise


def log_run_config(client: Any, run_id: str, cfg: RunConfig, extra: dict[str, Any]) -> None:
    """The resolved config (plus where it ran) as params, and as config.yaml."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in config_params(cfg, extra).items()])
    client.log_text(run_id, cfg.to_yaml(), "config.yaml")


def finish_run(client: Any, run_id: str, cfg: RunConfig, generator: nn.Module,
               frames: list[tuple[int, Any]], stopped: str | None = None) -> str:
    """The end of a good run: progress GIF, generator model, FINISHED. Returns the model URI."""
    import mlflow

    mlflow.flush_async_logging()  # the loop's batched metrics land before the run closes
    log_progress_gif(client, run_id, frames)
    model_uri = log_generator(client, run_id, generator, cfg.latent_dim)
    if stopped:
        client.set_tag(run_id, "stopped_reason", stopped)
    client.set_terminated(run_id, "FINISHED")
    return model_uri


def _close(client: Any, run_id: str, status: str, message: str) -> None:
    """Mark a run ended without losing what is queued; never mask the original error."""
    import mlflow

    try:
        mlflow.flush_async_logging()
        client.set_tag(run_id, "error", message[:5000])
        client.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001, S110 - the original exception matters more
        pass


def build_evaluator(cfg: RunConfig, data: ImageData, device: Any) -> Any:
    """The FID-style evaluator for `cfg.backbone`: trains/loads the classifier and the real
    statistics (cached on disk), so build it once per process and reuse it."""
    from gan.metrics import Evaluator

    return Evaluator(data, backbone=cfg.backbone, num_samples=cfg.eval_samples, device=device, seed=cfg.seed)
