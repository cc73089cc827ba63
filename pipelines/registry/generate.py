"""`gan-pipeline generate`: images from any generator model URI (models:/NAME@champion,
runs:/RUN_ID/generator), through the model's pyfunc face (a count and a seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.errors import TrackingError


def generate_images(model_uri: str, num_images: int, seed: int) -> Any:
    """uint8 [N, C, H, W] from any generator model URI (models:/NAME@champion, runs:/ID/generator)."""
    import mlflow
    import pandas as pd

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as e:  # noqa: BLE001 - MlflowException / OSError: one line for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrackingError(f"--model {model_uri!r} cannot be loaded: {first}") from None
    return model.predict(pd.DataFrame(), params={"num_images": num_images, "seed": seed})


def write_images(images: Any, out: str | Path | None, out_dir: str | Path | None) -> list[Path]:
    """A grid PNG at `out` and/or one PNG per image in `out_dir`."""
    import torch
    from PIL import Image

    from gan.sampling import image_grid

    written = []
    batch = torch.from_numpy(images)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_grid(batch)).save(out)
        written.append(Path(out))
    if out_dir:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            Image.fromarray(arr).save(d / f"{i:05d}.png")
            written.append(d / f"{i:05d}.png")
    return written
