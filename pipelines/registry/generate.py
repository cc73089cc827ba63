"""`gan-pipeline generate`: images from any generator model URI (models:/NAME@champion,
runs:/RUN_ID/generator): the model's exported generator, sampled by gan.sampling, the code
training scored it with (the model's served face gives the same images for a seed; a
test holds it to that), so any count works, not only a served request's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.errors import TrackingError


def generate_images(model_uri: str, num_images: int, seed: int) -> Any:
    """uint8 [N, C, H, W] from any generator model URI (models:/NAME@champion, runs:/ID/generator)."""
    from gan.sampling import generate_uint8, sample_latents
    from pipelines.tracking.generator_model import load_generator

    try:
        module, latent_dim = load_generator(model_uri)
    except Exception as e:  # noqa: BLE001 - MlflowException / OSError / KeyError: one line for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrackingError(f"--model {model_uri!r} cannot be loaded: {first}") from None
    return generate_uint8(module, sample_latents(num_images, latent_dim, seed)).numpy()


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


SERVE_PORT = 5001  # beside the MLflow UI's 5000


def serving_hint(model_uri: str, tracking_uri: str) -> str:
    """The commands that serve the model over REST and call it (docs/registry-and-serving.md:
    Serving the champion). The store's URI is shown without its password: the user exports their own."""
    import shlex

    from pipelines.tracking.store import redact

    store = f"MLFLOW_TRACKING_URI={shlex.quote(redact(tracking_uri))} "
    body = shlex.quote(json.dumps({"dataframe_records": [{"seed": 0, "num_images": 4}]}))
    return "\n".join([
        f"serve it: {store}mlflow models serve -m {shlex.quote(model_uri)} --env-manager local "
        f"-h 127.0.0.1 -p {SERVE_PORT}",
        f"  then:   curl -s http://127.0.0.1:{SERVE_PORT}/invocations -H 'Content-Type: application/json' -d {body}",
        f"  on a machine without gan-pipelines: {store}mlflow artifacts download -u {shlex.quote(model_uri)} "
        "-d champion, copy champion/, pip install -r champion/requirements.txt, serve -m champion",
    ])
