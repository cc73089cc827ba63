"""Writing one run's story while it trains: the loop's callbacks (batched per-step
metrics, sample grids with their step, eval scores linked to the generator that earned
them, checkpoints under a retention policy), and at the end the progress GIF. Only
rank 0 writes.

The clock: MLflow steps are optimizer steps (one sequence per run: resume and dedup rely
on it), and every logged row also carries `kimg` (thousands of real images D has seen),
so a chart with kimg as its x-axis lines up trials of different batch sizes. Grids are
upscaled to >= 512 px and kept twice: by step for the run page's image slider, and as
grids/epoch_NNN.png, a name every run of a sweep shares (an epoch is one pass over the
same data), so the compare page shows two runs' samples side by side.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gan.callbacks import Callbacks
from gan.checkpoint import checkpoint_name, save_checkpoint
from gan.config import RunConfig
from gan.sampling import fixed_latents, generate, image_grid, save_gif
from pipelines.tracking import names
from pipelines.tracking.models import BEST, FINAL, drop_role, log_model, model_with_role, run_models

# MLflow caps a log_batch at 1000 metrics.
_BATCH = 900
MIN_GRID_PX = 512  # a person sees digits, not specks, on the run page and the compare page


class MlflowCallbacks(Callbacks):
    """Writes the loop's numbers into one MLflow run (rank 0 only).

    `floor` is the last step the run already holds (after a resume): anything at or
    below it was logged before the kill and is not written again, so the run's step
    sequence has no duplicates. With `cfg` and `image_shape` it also keeps the run's best
    and final generators as LoggedModels (tracking.models), each eval's metrics carrying
    the model_id of the generator that earned them, and prunes old checkpoints to
    cfg.keep_checkpoints plus the best eval's.
    """

    def __init__(self, client: Any, run_id: str, rank: int = 0, floor: int = 0,
                 frames: list[tuple[int, np.ndarray]] | None = None, cfg: RunConfig | None = None,
                 image_shape: tuple[int, ...] | None = None, eval_floor: int | None = None) -> None:
        self.client, self.run_id, self.rank, self.floor = client, run_id, rank, floor
        # evals resume from their own floor: one a kill interrupted (losses logged, eval not) is redone
        self.eval_floor = floor if eval_floor is None else eval_floor
        self.frames: list[tuple[int, np.ndarray]] = list(frames or [])
        self.cfg, self.image_shape = cfg, image_shape
        self.model_at: tuple[int, str] | None = None  # (step, model_id) of the last model logged
        self.started = floor > 0  # a fresh run logs its untrained generator's grid at step 0
        self.best_epoch: int | None = None
        if floor and cfg is not None and rank == 0:  # a resumed run: its best so far
            best = model_with_role(client, run_id, BEST)
            self.best_epoch = int(best.tags.get(names.MODEL_EPOCH, 0)) if best else None

    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        rows = [(s, r) for s, r in rows if s > self.floor]
        if self.rank != 0 or not rows:
            return
        if not self.started:
            self.started = True
            self._log_untrained()
        ts = _now_ms()
        batch = [Metric(k, v, ts, s) for s, r in rows for k, v in {**r, **self._kimg(s)}.items()]
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + _BATCH], synchronous=False)

    def on_scored(self, epoch: int, step: int, generator: nn.Module, improved: bool, final: bool) -> None:
        if self.rank != 0 or step <= self.eval_floor or self.cfg is None or self.image_shape is None:
            return
        roles = [r for r, on in ((BEST, improved), (FINAL, final)) if on]
        if not roles:
            return
        model_id = log_model(self.client, self.run_id, self.cfg, generator, self.image_shape,
                             role=",".join(roles), epoch=epoch, step=step)
        self.model_at = (step, model_id)
        if final:  # an extended run's earlier final generator is final no more
            drop_role(self.client, self.run_id, FINAL, keep=model_id)
        if improved:
            self.best_epoch = epoch
            for old in run_models(self.client, self.run_id):  # a run keeps one best model
                if old.model_id != model_id and old.tags.get(names.MODEL_ROLE) == BEST:
                    self.client.delete_logged_model(old.model_id)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        if self.rank != 0 or step <= self.eval_floor:
            return
        from mlflow.entities import Metric

        self._log_grid(epoch, step, grid)
        ts = _now_ms()
        values = {**metrics, names.EPOCH: float(epoch), **self._kimg(step)}
        # Scores of a generator kept as a LoggedModel are linked to it: the Models tab and
        # search_logged_models rank models by their own numbers.
        model_id = self.model_at[1] if self.model_at and self.model_at[0] == step else None
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step, model_id=model_id)
                                                    for k, v in values.items()])

    def _kimg(self, step: int) -> dict[str, float]:
        if self.cfg is None:
            return {}
        return {names.KIMG: step * self.cfg.batch_size * self.cfg.n_dis / 1000}

    def _log_grid(self, epoch: int, step: int, grid: np.ndarray) -> None:
        big = upscale(grid)
        self.frames.append((step, big))
        self.client.log_image(self.run_id, big, key=names.GRID_KEY, step=step)
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="gan-grid-") as tmp:
            path = Path(tmp) / f"epoch_{epoch:03d}.png"
            Image.fromarray(big).save(path)
            self.client.log_artifact(self.run_id, str(path), names.GRIDS_DIR)

    def _log_untrained(self) -> None:
        """The grid of the generator before its first step (train() seeds cfg.seed, then
        builds the models: the same weights), so the slider starts at step 0."""
        if self.cfg is None or self.image_shape is None:
            return
        import torch

        from gan.models import build_models

        torch.manual_seed(self.cfg.seed)  # train() reseeds before it builds its own
        c, h, w = self.image_shape
        G, _ = build_models(self.cfg, (c, h, w))  # noqa: N806
        self._log_grid(0, 0, image_grid(generate(G, fixed_latents(self.cfg.latent_dim, self.cfg.seed))))

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        if self.rank != 0 or step < self.floor:
            return
        with tempfile.TemporaryDirectory(prefix="gan-ckpt-") as tmp:
            self.log_checkpoint(save_checkpoint(state, Path(tmp) / checkpoint_name(epoch)), step)

    def log_checkpoint(self, path: Path, step: int) -> None:
        """Upload a checkpoint file someone already wrote (a Ray Train worker's, say), then
        drop the ones the retention policy no longer keeps."""
        if self.rank == 0 and step >= self.floor:
            self.client.log_artifact(self.run_id, str(path), names.CHECKPOINT_DIR)
            if self.cfg is not None and self.cfg.keep_checkpoints > 0:
                keep_best = checkpoint_name(self.best_epoch) if self.best_epoch else None
                prune_checkpoints(self.client, self.run_id, self.cfg.keep_checkpoints, keep_best)


def prune_checkpoints(client: Any, run_id: str, keep: int, also_keep: str | None = None) -> list[str]:
    """Delete a run's checkpoints but the newest `keep` (and `also_keep`, the best eval's);
    returns what was deleted. Stores that cannot delete keep everything (with a warning)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    found = sorted(a.path for a in client.list_artifacts(run_id, names.CHECKPOINT_DIR) if a.path.endswith(".pt"))
    doomed = [p for p in found[:-keep] if Path(p).name != also_keep]
    if not doomed:
        return []
    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    try:
        for p in doomed:
            repo.delete_artifacts(p)
    except (NotImplementedError, OSError) as e:
        import sys

        print(f"warning: old checkpoints kept: this artifact store cannot delete ({e})", file=sys.stderr)
        return []
    return doomed


def upscale(grid: np.ndarray, min_px: int = MIN_GRID_PX) -> np.ndarray:
    """Nearest-neighbour upscale by a whole factor so the shorter side is >= min_px."""
    factor = -(-min_px // min(grid.shape[:2]))
    return np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1) if factor > 1 else grid


def log_progress_gif(client: Any, run_id: str, frames: list[tuple[int, np.ndarray]]) -> None:
    """The (step, grid) frames as progress.gif in step order, each labelled with its epoch
    and FID (read back from the run, so a resumed run's frames get theirs too)."""
    if not frames:
        return
    epochs = {m.step: int(m.value) for m in client.get_metric_history(run_id, names.EPOCH)}
    fids = {m.step: m.value for m in client.get_metric_history(run_id, names.FID)}
    with tempfile.TemporaryDirectory() as tmp:
        ordered = [_labelled(f, _frame_label(s, epochs, fids)) for s, f in sorted(frames, key=lambda f: f[0])]
        client.log_artifact(run_id, str(save_gif(ordered, Path(tmp) / names.PROGRESS_GIF)))


def _frame_label(step: int, epochs: dict[int, int], fids: dict[int, float]) -> str:
    if step == 0:
        return "epoch 0 (untrained)"
    label = f"epoch {epochs[step]}" if step in epochs else f"step {step}"
    return label + (f"   FID {fids[step]:.2f}" if step in fids else "")


def _labelled(frame: np.ndarray, text: str) -> np.ndarray:
    """The frame (RGB) under a black strip with `text` in white."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = np.stack([frame] * 3, axis=-1) if frame.ndim == 2 else frame[..., :3]
    size = max(14, rgb.shape[1] // 24)
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + size + 12))
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (0, size + 12))
    ImageDraw.Draw(canvas).text((8, 6), text, fill=(255, 255, 255), font=ImageFont.load_default(size=size))
    return np.asarray(canvas)


def _now_ms() -> int:
    return int(time.time() * 1000)
