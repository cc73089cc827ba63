"""Where the loop runs, in this process: the run's MLflow callbacks (wrapped by the
caller's own, e.g. a sweep trial's hand-off to Tune), the machine's system metrics while
it trains, the one loop, and every write settled. A local run and a one-worker sweep
trial differ only in the wrapper; Ray Train's counterpart is distributed.trainer.RayTrainLoop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gan.callbacks import Callbacks
from gan.config import RunConfig
from gan.data import ImageData
from gan.train import TrainResult, resolve_device, train
from pipelines.tracking.resources import system_metrics
from pipelines.tracking.runs import Restored, TrackedRun
from pipelines.training.prepare import shared_evaluator


@dataclass
class InProcessLoop:
    """The one loop on `data` in this process, on `device`, scored by `evaluator` (a
    local run builds it before its run exists: a backbone the data cannot use is bad
    input; a sweep checked the backbone once, before its first trial)."""

    data: ImageData
    evaluator: Any
    device: torch.device
    wrap: Callable[[Callbacks], Callbacks] | None = None
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more params (a trial's id)
    restores_itself = False

    @classmethod
    def reusing(cls, cfg: RunConfig, data: ImageData, **kwargs: Any) -> InProcessLoop:
        """The loop of a process that trains run after run (a Tune actor reused across a
        sweep's trials): its evaluator is kept for the next run of the same setting."""
        evaluator = shared_evaluator(cfg, data)
        return cls(data, evaluator, resolve_device(cfg.device), **kwargs)

    @property
    def where(self) -> dict[str, Any]:
        return {"world_size": 1, "device_type": str(self.device), "num_workers": 1, **self.extra}

    def fit(self, run: TrackedRun, cfg: RunConfig, restored: Restored) -> TrainResult:
        """Train `cfg` into `run` from `restored`; returns the loop's result with every
        write sent (or TrackingLost after a bounded wait)."""
        tracking: Callbacks = run.tracking(cfg, self.data.shape, restored)
        callbacks = self.wrap(tracking) if self.wrap else tracking
        with system_metrics(run.run_id, run.client.tracking_uri, resumed=not run.fresh):
            result = train(cfg, self.data, callbacks, evaluator=self.evaluator, resume=restored.state,
                           device=self.device, progress=self.progress)
        run.settle(result.seconds)
        return result
