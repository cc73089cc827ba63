"""Where the loop runs, in this process: the run's MLflow callbacks (wrapped by the
caller's own, e.g. a sweep trial's hand-off to Tune), the machine's system metrics while
it trains, the one loop, and every write settled. A local run and a one-worker sweep
trial differ only in the wrapper; Ray Train's counterpart is distributed.trainer.RayTrainLoop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gan.callbacks import Callbacks
from gan.config import RunConfig
from gan.data import Dataset
from gan.train import TrainResult, resolve_device, train
from pipelines.tracking.history import Restored
from pipelines.tracking.resources import system_metrics
from pipelines.tracking.runs import TrackedRun
from pipelines.training.prepare import shared_evaluator


@dataclass
class InProcessLoop:
    """The one loop on `data` in this process, on `device`, scored by `evaluator`. A local
    run builds both before its run exists (a backbone the data cannot use is bad input).
    Left out, `prepare` builds them for the run's config: a process that trains run after
    run (a Tune actor reused across a sweep's trials) keeps its evaluator for the next run
    of the same setting, and `gpu` (the trial's slot has one) trains an "auto" or "cpu"
    config on CUDA."""

    data: Dataset
    evaluator: Any = None
    device: torch.device | None = None
    wrap: Callable[[Callbacks], Callbacks] | None = None
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more params (a trial's id)
    gpu: bool = False
    restores_itself = False

    @property
    def where(self) -> dict[str, Any]:
        return {"world_size": 1, "device_type": str(self.device), "num_workers": 1, **self.extra}

    def prepare(self, cfg: RunConfig) -> RunConfig:
        if self.gpu and cfg.device in ("auto", "cpu"):
            cfg = dataclasses.replace(cfg, device="cuda")
        if self.evaluator is None:
            self.evaluator = shared_evaluator(cfg, self.data)
        if self.device is None:
            self.device = resolve_device(cfg.device)
        return cfg

    def fit(self, run: TrackedRun, cfg: RunConfig, restored: Restored) -> TrainResult:
        """Train `cfg` into `run` from `restored`; returns the loop's result with every
        write sent (or TrackingLost after a bounded wait)."""
        tracking: Callbacks = run.tracking(cfg, self.data.shape, restored)
        callbacks = self.wrap(tracking) if self.wrap else tracking
        with system_metrics(run.run_id, run.client.tracking_uri, resumed=not run.fresh):
            result = train(cfg, self.data, callbacks, evaluator=self.evaluator, resume=restored.state,
                           device=self.device, progress=self.progress, warm=restored.warm)
        run.settle(result.seconds)
        return result
