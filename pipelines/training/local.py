"""One tracked training run, in-process (world size 1, no Ray start).

Order matters: everything a user can get wrong (config, data, store, model size,
backbone) is checked before the MLflow run exists, so bad input never leaves a
half-created run; after that the run's lifecycle (tracking.runs.TrackedRun) owns it.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

from gan.config import RunConfig, make_config
from gan.data import Dataset
from gan.train import TrainResult, resolve_device
from pipelines.errors import RunDiverged
from pipelines.tracking import names
from pipelines.tracking.history import Restored
from pipelines.tracking.opening import find_resumable, open_run
from pipelines.tracking.runs import TrackedRun
from pipelines.tracking.store import client_for, ensure_experiment, environment_tags, probe_store, tracking_uri
from pipelines.training.in_process import InProcessLoop
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
    extend_to: int | None = None,
    tags: dict[str, str] | None = None,
    warm: dict[str, Any] | None = None,
) -> RunOutcome:
    """Train in this process and record one MLflow run (or continue one with `resume`;
    `extend_to` epochs extends a FINISHED one). `tags`: more tags of the new run (where it
    came from); `warm`: a checkpoint its networks and optimizers start from (a fine-tune)."""
    if progress is None:
        progress = sys.stderr.isatty()
    uri = tracking_uri()
    probe_store(uri)
    if resume:
        return _resume(client_for(uri), experiment, resume, extend_to, progress)
    # Every user error surfaces before the store is even opened. The evaluator is built
    # here too: a backbone the dataset cannot use (the classifier on an unlabelled
    # folder) is bad input, not a failed run.
    data = prepare(cfg, warm=warm)
    device = resolve_device(cfg.device)
    evaluator = build_evaluator(cfg, data, device)
    client = client_for(uri)
    experiment_id = ensure_experiment(client, experiment)
    run_id, experiment_id = open_run(client, experiment_id, run_name,
                                     {**environment_tags(cfg.dataset, str(device)), **(tags or {})})
    with TrackedRun(client, run_id, fresh=True, warm=warm) as run:
        loop = InProcessLoop(data, evaluator, device, progress=progress)
        return _outcome(run, experiment_id, cfg, data, loop)


def _resume(client: Any, experiment: str, resume: str, extend_to: int | None, progress: bool) -> RunOutcome:
    """Continue a run from its newest intact checkpoint, as its one owner; each metric
    kind from its own floor, so whatever a kill interrupted (an eval too) is redone once."""
    experiment_id = ensure_experiment(client, experiment)
    found = find_resumable(client, experiment_id, resume, extend_to)
    with TrackedRun(client, found.info.run_id, fresh=False, contested=True) as run:
        restored = run.restore(require_checkpoint=True)
        assert restored.state is not None
        cfg = make_config(restored.state["config"])  # the run's own config reproduces it
        if extend_to and extend_to > cfg.epochs:
            cfg = dataclasses.replace(cfg, epochs=extend_to)
            restored.state = {**restored.state, "config": cfg.to_dict()}
            client.set_tag(run.run_id, names.EXTENDED_TO, str(extend_to))
            print(f"extending run {run.run_id} ({found.info.status}) to {extend_to} epochs in the same run",
                  file=sys.stderr)
        data = prepare(cfg)
        device = resolve_device(cfg.device)
        loop = InProcessLoop(data, build_evaluator(cfg, data, device), device, progress=progress)
        print(f"resuming run {run.run_id} from epoch {restored.state['epoch']} (step {restored.state['step']})",
              file=sys.stderr)
        return _outcome(run, found.info.experiment_id, cfg, data, loop, restored)


def _outcome(run: TrackedRun, experiment_id: str, cfg: RunConfig, data: Dataset, loop: InProcessLoop,
             restored: Restored | None = None) -> RunOutcome:
    """The run's one sequence (TrackedRun.train_and_close), then its one way out: FINISHED, or
    FAILED as diverged (an error for the command)."""
    result, model_uri = run.train_and_close(cfg, data, loop, restored=restored)
    if model_uri is None:
        raise RunDiverged(f"run {run.run_id} is FAILED: {result.stopped}")
    return RunOutcome(run.run_id, experiment_id, result, model_uri)
