"""Writing one run's story while it trains: the loop's callbacks (batched per-step
metrics, sample grids with their step, eval scores, checkpoints), and at the end the
progress GIF and the generator model. Only rank 0 writes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gan.checkpoint import checkpoint_name, save_checkpoint
from gan.sampling import save_gif
from gan.train import Callbacks
from pipelines.tracking import names

# MLflow caps a log_batch at 1000 metrics.
_BATCH = 900


class MlflowCallbacks(Callbacks):
    """Writes the loop's numbers into one MLflow run (rank 0 only).

    `floor` is the last step the run already holds (after a resume): anything at or
    below it was logged before the kill and is not written again, so the run's step
    sequence has no duplicates.
    """

    def __init__(self, client: Any, run_id: str, rank: int = 0, floor: int = 0,
                 frames: list[tuple[int, np.ndarray]] | None = None) -> None:
        self.client, self.run_id, self.rank, self.floor = client, run_id, rank, floor
        self.frames: list[tuple[int, np.ndarray]] = list(frames or [])

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        rows = [(s, r) for s, r in rows if s > self.floor]
        if self.rank != 0 or not rows:
            return
        ts = _now_ms()
        batch = [Metric(k, v, ts, s) for s, r in rows for k, v in r.items()]
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + _BATCH], synchronous=False)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        if self.rank != 0 or step <= self.floor:
            return
        from mlflow.entities import Metric

        self.frames.append((step, grid))
        self.client.log_image(self.run_id, grid, key=names.GRID_KEY, step=step)
        ts = _now_ms()
        values = {**metrics, names.EPOCH: float(epoch)}
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        if self.rank != 0 or step < self.floor:
            return
        with tempfile.TemporaryDirectory(prefix="gan-ckpt-") as tmp:
            self.log_checkpoint(save_checkpoint(state, Path(tmp) / checkpoint_name(epoch)), step)

    def log_checkpoint(self, path: Path, step: int) -> None:
        """Upload a checkpoint file someone already wrote (a Ray Train worker's, say)."""
        if self.rank == 0 and step >= self.floor:
            self.client.log_artifact(self.run_id, str(path), names.CHECKPOINT_DIR)


def log_progress_gif(client: Any, run_id: str, frames: list[tuple[int, np.ndarray]]) -> None:
    """The (step, grid) frames as progress.gif in step order; nothing when there are none."""
    if not frames:
        return
    with tempfile.TemporaryDirectory() as tmp:
        ordered = [f for _, f in sorted(frames, key=lambda f: f[0])]
        client.log_artifact(run_id, str(save_gif(ordered, Path(tmp) / names.PROGRESS_GIF)))


def log_generator(client: Any, run_id: str, generator: nn.Module, latent_dim: int) -> str:
    """Log G as the run's `generator` MLflow model (see generator_model); saved then
    uploaded, so no fluent active run is needed. Returns its runs:/ URI."""
    from pipelines.tracking.generator_model import save_generator

    with tempfile.TemporaryDirectory() as tmp:
        path = save_generator(generator, Path(tmp) / names.GENERATOR_DIR, latent_dim)
        client.log_artifacts(run_id, str(path), names.GENERATOR_DIR)
    return f"runs:/{run_id}/{names.GENERATOR_DIR}"


def _now_ms() -> int:
    return int(time.time() * 1000)
