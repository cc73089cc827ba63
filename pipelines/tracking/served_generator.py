"""The generator's serving face: the pyfunc loader stored with every generator model.

save_generator copies this file into the model's code/ folder and names it as the
MLmodel's loader_module, so a model loads and serves wherever its requirements.txt (the
public packages this file imports, pinned) is installed: no gan/, no pipelines/. It must
stay standalone: only the standard library and REQUIREMENTS (a test checks the imports),
and its sampling must stay gan.sampling's bit for bit (a test checks that too), because
the images served for a seed are the images the training run scored at that seed.
Change it only compatibly: a process imports `served_generator` once, so every model it
loads afterwards runs the code of the first one loaded.

Request (params, or one row per request in the input; a row's values win; format is a
param only):
    num_images  1..MAX_IMAGES per request (default 64), MAX_IMAGES in all the rows
    seed        0..MAX_SEED (default 0); (num_images, seed) names one set of images:
                the first k of n images are not, in general, the images of (k, seed)
    format      "png" (default): rows {"seed", "index", "png"}, png = base64 PNG bytes
                "array": uint8 [N, C, H, W], the rows' images one after the other
Out-of-range values raise MlflowException(INVALID_PARAMETER_VALUE): HTTP 400 from
`mlflow models serve`, before anything is generated.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from PIL import Image

# The distributions this file imports (pillow is PIL): save_generator pins each to the
# version it was saved with, and nothing else, in the model's requirements.txt.
REQUIREMENTS = ("mlflow", "numpy", "pandas", "pillow", "torch")
META_FILE = "generator.json"  # {"latent_dim": D, "image_shape": [C, H, W]} beside the program
PROGRAM_FILE = "model.pt2"  # the torch.export program (the pytorch flavor's own file)
GENERATE_BATCH = 250  # = gan.sampling.GENERATE_BATCH: the batches the score was computed in
DEFAULT_NUM_IMAGES = 64
MAX_IMAGES = 1024  # per request: bounds the memory and time one request can ask for
MAX_SEED = 2**63 - 1  # what an MLflow "long" param holds (and torch.Generator accepts)
FORMATS = ("png", "array")


class NonFiniteImages(ValueError):
    """The generator emitted NaN/inf (as gan.sampling.NonFiniteImages)."""


def sample_latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The n latents a seed stands for, drawn in one call (= gan.sampling.sample_latents)."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped (= gan.data.to_uint8)."""
    return ((images.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def generate_uint8(module: Any, z: torch.Tensor) -> torch.Tensor:
    """G(z) as uint8 in fixed batches of GENERATE_BATCH (= gan.sampling.generate_uint8 on
    the CPU): the same batches as the score, so the same pixels."""
    out = []
    with torch.no_grad():
        for part in z.split(GENERATE_BATCH):
            x = module(part)
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteImages("the generator's images are not finite (NaN or inf)")
            out.append(to_uint8(x).cpu())
    return torch.cat(out)


def png_base64(image: np.ndarray) -> str:
    """One uint8 [C, H, W] image (C = 1, 3 or 4) as base64 PNG bytes."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bad(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _whole(value: Any, name: str, low: int, high: int) -> int:
    """`value` as an int in [low, high], or the 400 that names the field and what is allowed."""
    whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not whole or not low <= int(value) <= high:
        shown = int(value) if whole else repr(value)
        raise _bad(f"{name}={shown} is invalid: must be an integer in [{low}, {high}]")
    return int(value)


def requests(model_input: Any, params: dict[str, Any] | None) -> tuple[list[tuple[int, int]], str]:
    """([(seed, num_images), ...], format) of a call, checked before any work is done."""
    params = params or {}
    fmt = params.get("format") or "png"
    if fmt not in FORMATS:
        raise _bad(f"format={fmt!r} is invalid: must be one of {', '.join(FORMATS)}")
    seed = _whole(params.get("seed", 0), "seed", 0, MAX_SEED)
    n = _whole(params.get("num_images", DEFAULT_NUM_IMAGES), "num_images", 1, MAX_IMAGES)
    rows = _rows(model_input)
    if len(rows) > MAX_IMAGES:
        raise _bad(f"{len(rows)} input rows is invalid: must be at most {MAX_IMAGES} per request")
    if not rows:
        return [(seed, n)], fmt
    asked = [(_whole(row.get("seed", seed), "seed", 0, MAX_SEED),
              _whole(row.get("num_images", n), "num_images", 1, MAX_IMAGES)) for row in rows]
    total = sum(k for _, k in asked)
    if total > MAX_IMAGES:
        raise _bad(f"num_images={total} in all rows is invalid: must be at most {MAX_IMAGES} per request")
    return asked, fmt


def _rows(model_input: Any) -> list[dict[str, Any]]:
    if model_input is None:
        return []
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    unknown = sorted(set(map(str, frame.columns)) - {"seed", "num_images"})
    if unknown:
        raise _bad(f"input columns {unknown} are invalid: must be seed and/or num_images")
    # A column with a gap is floats (NaN) to pandas: MLflow's schema check refuses it (400).
    return [dict(zip(map(str, frame.columns), values, strict=True)) for values in frame.itertuples(index=False)]


class ServedGenerator:
    """What mlflow.pyfunc.load_model wraps: (seed, num_images, format) -> images."""

    def __init__(self, module: Any, latent_dim: int, image_shape: tuple[int, ...]) -> None:
        self.module, self.latent_dim, self.image_shape = module, latent_dim, image_shape

    def images(self, seed: int, n: int) -> np.ndarray:
        """uint8 [n, C, H, W] for (n, seed): the images training scored at that seed."""
        try:
            return generate_uint8(self.module, sample_latents(n, self.latent_dim, seed)).numpy()
        except NonFiniteImages as e:  # the model is broken, not the request: a 500
            raise MlflowException(str(e), error_code=INTERNAL_ERROR) from None

    def predict(self, model_input: Any = None, params: dict[str, Any] | None = None) -> Any:
        asked, fmt = requests(model_input, params)
        batches = [(seed, self.images(seed, n)) for seed, n in asked]
        if fmt == "array":
            return np.concatenate([images for _, images in batches])
        rows = [(seed, i, png_base64(image)) for seed, images in batches for i, image in enumerate(images)]
        return pd.DataFrame(rows, columns=["seed", "index", "png"])


def _load_pyfunc(data_path: str, model_config: Any = None) -> ServedGenerator:
    """MLflow's pyfunc loader hook (the MLmodel's loader_module names this module).
    Like any torch or MLflow model, load only models from a store you trust:
    torch.export.load may unpickle some of the tensors it saved."""
    meta = json.loads((Path(data_path) / META_FILE).read_text())
    module = torch.export.load(str(Path(data_path) / PROGRAM_FILE)).module()
    return ServedGenerator(module, int(meta["latent_dim"]), tuple(meta["image_shape"]))
