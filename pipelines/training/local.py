"""One tracked training run, in-process (world size 1, no Ray start).

Order matters: everything a user can get wrong (config, data, store, model size) is
checked before the MLflow run exists, so bad input never leaves a half-created run;
after that, any failure marks the run FAILED with the error and keeps what was logged.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from gan.config import RunConfig, make_config
from gan.data import ImageData
from gan.train import TrainResult, resolve_device, train
from pipelines.errors import RunDiverged, TrackingError
from pipelines.tracking.callbacks import MlflowCallbacks
from pipelines.tracking.history import last_logged_step, latest_checkpoint, logged_grids
from pipelines.tracking.runs import fail_diverged, find_resumable, finish_run, log_run_config, open_run, run_guard
from pipelines.tracking.store import (
    check_writable,
    client_for,
    ensure_experiment,
    environment_tags,
    tracking_uri,
)
from pipelines.training.prepare import DEFAULT_EXPERIMENT, build_evaluator, prepare


@dataclass
class RunOutcome:
    run_id: str
    experiment_id: str
    result: TrainResult
    model_uri: str


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
        callbacks = MlflowCallbacks(client, run_id, floor=floor, frames=frames, cfg=cfg, image_shape=data.shape)
        evaluator = evaluator or build_evaluator(cfg, data, device)
        result = train(cfg, data, callbacks, evaluator=evaluator, resume=state, device=device, progress=progress)
        if result.diverged:
            assert result.stopped is not None
            fail_diverged(client, run_id, callbacks.frames, result.stopped)
            raise RunDiverged(f"run {run_id} is FAILED: {result.stopped}")
        model_uri = finish_run(client, run_id, cfg, result.generator, callbacks.frames, data.shape,
                               epoch=result.epochs_done, step=result.step, stopped=result.stopped)
        return RunOutcome(run_id, experiment_id, result, model_uri)
