"""Where the loop runs, in this process: the run's MLflow callbacks (wrapped by the
caller's own, e.g. a sweep trial's hand-off to Tune), the machine's system metrics while
it trains, the one loop, and every write settled. A local run and a one-worker sweep
trial differ only in the wrapper; Ray Train's counterpart is distributed.trainer.fit_run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gan.callbacks import Callbacks
from gan.config import RunConfig
from gan.data import ImageData
from gan.train import TrainResult, resolve_device, train
from pipelines.tracking.resources import system_metrics
from pipelines.tracking.runs import Restored, TrackedRun


def fit_here(run: TrackedRun, cfg: RunConfig, data: ImageData, restored: Restored, evaluator: Any, *,
             wrap: Callable[[Callbacks], Callbacks] | None = None, progress: bool = False) -> TrainResult:
    """Train `cfg` on `data` in this process into `run`, from `restored`; returns the
    loop's result with every write sent (or TrackingLost after a bounded wait)."""
    tracking: Callbacks = run.tracking(cfg, data.shape, restored)
    callbacks = wrap(tracking) if wrap else tracking
    with system_metrics(run.run_id, run.client.tracking_uri, resumed=not run.fresh):
        result = train(cfg, data, callbacks, evaluator=evaluator, resume=restored.state,
                       device=resolve_device(cfg.device), progress=progress)
    run.settle(result.seconds)
    return result
