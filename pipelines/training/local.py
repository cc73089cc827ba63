"""One tracked training run, in-process (world size 1, no Ray start).

Order matters: everything a user can get wrong (config, data, store, model size) is
checked before the MLflow run exists, so bad input never leaves a half-created run;
after that, any failure marks the run FAILED with the error and keeps what was logged.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from gan.config import RunConfig, make_config
from gan.data import ImageData
from gan.train import TrainResult, resolve_device, train
from pipelines.errors import RunDiverged, TrackingError
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks, send_offline_writes
from pipelines.tracking.history import (
    NoIntactCheckpoint,
    last_eval_step,
    last_logged_step,
    latest_checkpoint,
    logged_grids,
)
from pipelines.tracking.inputs import log_dataset
from pipelines.tracking.lease import lease
from pipelines.tracking.resources import log_eval_share, system_metrics
from pipelines.tracking.runs import (
    clear_stale_tags,
    close_run,
    fail_diverged,
    find_resumable,
    finish_run,
    log_run_config,
    open_run,
    run_guard,
)
from pipelines.tracking.store import client_for, ensure_experiment, environment_tags, probe_store, tracking_uri
from pipelines.training.prepare import DEFAULT_EXPERIMENT, build_evaluator, prepare


@dataclass
class RunOutcome:
    run_id: str
    experiment_id: str
    result: TrainResult
    model_uri: str


# Test hook: GAN_PIPELINES_DIE_AT_EVAL=N makes the process kill -9 itself as eval N
# starts, its losses logged and its scores not: what a kill during an eval leaves behind.
DIE_AT_EVAL_ENV = "GAN_PIPELINES_DIE_AT_EVAL"


def _dies_at_eval(evaluator: Any, callbacks: MlflowCallbacks) -> Any:
    die_at = int(os.environ.get(DIE_AT_EVAL_ENV) or 0)
    if not die_at:
        return evaluator
    calls = {"n": 0}

    def evaluate(generator: Any, latent_dim: int) -> Any:
        calls["n"] += 1
        if calls["n"] == die_at:
            callbacks.flush()  # the losses so far are in the run
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluator(generator, latent_dim)

    return evaluate


def run_local(
    cfg: RunConfig,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    resume: str | None = None,
    progress: bool | None = None,
    extend_to: int | None = None,
) -> RunOutcome:
    """Train in this process and record one MLflow run (or continue one with `resume`;
    `extend_to` epochs extends a FINISHED one)."""
    if progress is None:
        progress = sys.stderr.isatty()
    uri = tracking_uri()
    probe_store(uri)
    if resume:
        return _resume(client_for(uri), experiment, resume, extend_to, progress)
    # Every user error surfaces before the store is even opened. The evaluator is built
    # here too: a backbone the dataset cannot use (the classifier on an unlabelled
    # folder) is bad input, not a failed run.
    data = prepare(cfg)
    device = resolve_device(cfg.device)
    evaluator = build_evaluator(cfg, data, device)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, experiment)
    run_id, experiment_id = open_run(client, experiment_id, run_name, environment_tags(cfg.dataset, str(device)))
    with lease(client, run_id):
        return execute(client, experiment_id, run_id, cfg, data, progress=progress, evaluator=evaluator)


def _resume(client: Any, experiment: str, resume: str, extend_to: int | None, progress: bool) -> RunOutcome:
    """Continue a run from its newest intact checkpoint, as its one owner; each metric
    kind from its own floor, so whatever a kill interrupted (an eval too) is redone once."""
    experiment_id = ensure_experiment(client, experiment)
    run = find_resumable(client, experiment_id, resume, extend_to)
    run_id = run.info.run_id
    with lease(client, run_id, contested=True):
        send_offline_writes(client, run_id)  # what it trained while the server was away, first
        run = client.get_run(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                state = latest_checkpoint(client, run_id, tmp)
            except NoIntactCheckpoint as e:
                close_run(client, run_id, "FAILED", str(e))
                raise TrackingError(f"--resume {run_id}: {e}; the run is marked FAILED") from None
            if state is None:
                raise TrackingError(f"--resume: run {run_id} has no checkpoint to continue from")
            frames = logged_grids(client, run_id, tmp)
        cfg = make_config(state["config"])  # the run's own config reproduces it
        if extend_to and extend_to > cfg.epochs:
            cfg = dataclasses.replace(cfg, epochs=extend_to)
            state = {**state, "config": cfg.to_dict()}
            client.set_tag(run_id, names.EXTENDED_TO, str(extend_to))
            print(f"extending run {run_id} ({run.info.status}) to {extend_to} epochs in the same run",
                  file=sys.stderr)
        data = prepare(cfg)
        evaluator = build_evaluator(cfg, data, resolve_device(cfg.device))
        clear_stale_tags(client, run)
        client.update_run(run_id, status="RUNNING")
        print(f"resuming run {run_id} from epoch {state['epoch']} (step {state['step']})", file=sys.stderr)
        floors = (last_logged_step(client, run_id), last_eval_step(client, run_id))
        return execute(client, run.info.experiment_id, run_id, cfg, data, state=state, floors=floors,
                       frames=frames, progress=progress, fresh=False, evaluator=evaluator)


def execute(
    client: Any, experiment_id: str, run_id: str, cfg: RunConfig, data: ImageData, *,
    state: dict[str, Any] | None = None, floors: tuple[int, int] = (0, 0), frames: list | None = None,
    progress: bool = True, fresh: bool = True, evaluator: Any = None,
) -> RunOutcome:
    """Run the loop into an existing MLflow run; mark it FINISHED, FAILED or KILLED."""
    device = resolve_device(cfg.device)
    with run_guard(client, run_id):
        if fresh:
            where = {"world_size": 1, "device_type": str(device), "num_workers": 1}
            log_run_config(client, run_id, cfg, where)
            log_dataset(client, run_id, cfg.dataset, data)
        callbacks = MlflowCallbacks(client, run_id, floor=floors[0], eval_floor=floors[1], frames=frames,
                                    cfg=cfg, image_shape=data.shape)
        evaluator = _dies_at_eval(evaluator or build_evaluator(cfg, data, device), callbacks)
        with system_metrics(run_id, client.tracking_uri, resumed=not fresh):
            result = train(cfg, data, callbacks, evaluator=evaluator, resume=state, device=device, progress=progress)
        callbacks.settle()  # all sent, or (server away) a bounded wait, then TrackingLost
        log_eval_share(client, run_id, result.seconds)
        if result.diverged:
            assert result.stopped is not None
            fail_diverged(client, run_id, callbacks.frames, result.stopped)
            raise RunDiverged(f"run {run_id} is FAILED: {result.stopped}")
        model_uri = finish_run(client, run_id, cfg, result.generator, callbacks.frames, data.shape,
                               epoch=result.epochs_done, step=result.step, stopped=result.stopped)
        return RunOutcome(run_id, experiment_id, result, model_uri)
