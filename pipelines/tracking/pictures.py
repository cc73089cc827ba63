"""Pictures of a run: sample grids upscaled for the UI, and the labelled progress GIF
(each frame with its epoch and FID, or `not scored` where the eval budget skipped the
scores, read back from the run so a resumed run's frames get theirs too)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gan.sampling import save_gif
from pipelines.tracking import names

MIN_GRID_PX = 512  # a person sees digits, not specks, on the run page and the compare page


def upscale(grid: np.ndarray, min_px: int = MIN_GRID_PX) -> np.ndarray:
    """Nearest-neighbour upscale by a whole factor so the shorter side is >= min_px."""
    factor = -(-min_px // min(grid.shape[:2]))
    return np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1) if factor > 1 else grid


def log_progress_gif(client: Any, run_id: str, frames: list[tuple[int, np.ndarray]]) -> None:
    """The (step, grid) frames as progress.gif in step order, each labelled with its epoch
    and FID, or `not scored` (read back from the run, so a resumed run's frames get theirs
    too: a scored eval's step holds the `epoch` metric, a grid drawn unscored does not)."""
    if not frames:
        return
    epochs = {m.step: int(m.value) for m in client.get_metric_history(run_id, names.EPOCH)}
    fids = {m.step: m.value for m in client.get_metric_history(run_id, names.FID)}
    with tempfile.TemporaryDirectory() as tmp:
        ordered = [_labelled(f, _frame_label(s, epochs, fids)) for s, f in sorted(frames, key=lambda f: f[0])]
        client.log_artifact(run_id, str(save_gif(ordered, Path(tmp) / names.PROGRESS_GIF)))


def _frame_label(step: int, epochs: dict[int, int], fids: dict[int, float]) -> str:
    """`epoch 3   FID 12.34` for a scored eval, `epoch 2   not scored` for a grid the eval
    budget drew without scores (its epoch from the run's steps per epoch)."""
    if step == 0:
        return "epoch 0 (untrained)"
    if step in epochs:
        return f"epoch {epochs[step]}   " + (f"FID {fids[step]:.2f}" if step in fids else "scored")
    epoch = _epoch_at(step, epochs)
    return (f"epoch {epoch}" if epoch is not None else f"step {step}") + "   not scored"


def _epoch_at(step: int, epochs: dict[int, int]) -> int | None:
    """The epoch that ends at `step`, from any scored eval's (step, epoch): a run's epochs
    all have the same number of steps. None when no eval tells, or `step` ends none."""
    for s, e in epochs.items():
        if e > 0 and s % e == 0 and step % (s // e) == 0:
            return step // (s // e)
    return None


def _labelled(frame: np.ndarray, text: str) -> np.ndarray:
    """The frame (RGB) under a black strip with `text` in white."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = np.stack([frame] * 3, axis=-1) if frame.ndim == 2 else frame[..., :3]
    size = max(14, rgb.shape[1] // 24)
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + size + 12))
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (0, size + 12))
    ImageDraw.Draw(canvas).text((8, 6), text, fill=(255, 255, 255), font=ImageFont.load_default(size=size))
    return np.asarray(canvas)
