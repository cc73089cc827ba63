"""The generator as an MLflow model with two faces.

- pytorch flavor: the plain module (a torch.export pt2 program), mapping latents
  [N, latent_dim] to images in [-1, 1]: `mlflow.pytorch.load_model(uri)(z)`.
- python_function flavor (this module is its loader): params `num_images` and `seed`
  map to a uint8 batch [N, C, H, W]; the same seed gives the same images:
  `mlflow.pyfunc.load_model(uri).predict(pd.DataFrame(), params={"num_images": 16, "seed": 0})`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

META_FILE = "generator.json"
DEFAULT_NUM_IMAGES = 64
MAX_NUM_IMAGES = 10_000


def save_generator(generator: nn.Module, path: str | Path, latent_dim: int) -> Path:
    """Write the two-flavor model directory at `path` (which must not exist)."""
    import mlflow
    from mlflow.models import Model, ModelSignature, infer_signature
    from mlflow.pyfunc import add_to_model
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    path = Path(path)
    generator = generator.cpu().eval()
    z = np.random.default_rng(0).standard_normal((4, latent_dim)).astype(np.float32)
    with torch.no_grad():
        out = generator(torch.from_numpy(z)).numpy()
    mlflow.pytorch.save_model(
        generator, str(path), input_example=z, signature=infer_signature(z, out), serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "gan-pipelines"],
    )
    model = Model.load(str(path / "MLmodel"))
    data = model.flavors["pytorch"]["model_data"]
    (path / data / META_FILE).write_text(json.dumps({"latent_dim": latent_dim, "image_shape": list(out.shape[1:])}))
    # The pyfunc face takes a count and a seed, not latents: its own loader and signature.
    model.flavors.pop("python_function", None)
    add_to_model(model, loader_module=__name__, data=data, env={"virtualenv": "python_env.yaml"})
    model.signature = ModelSignature(
        inputs=Schema([ColSpec("long", "seed", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *out.shape[1:]))]),
        params=ParamSchema([ParamSpec("num_images", "long", DEFAULT_NUM_IMAGES), ParamSpec("seed", "long", 0)]),
    )
    model.saved_input_example_info = None  # type: ignore[assignment]  # MLflow's own way to drop it
    for example in ("input_example.json", "serving_input_example.json"):
        (path / example).unlink(missing_ok=True)
    model.save(str(path / "MLmodel"))
    return path


class GeneratorPyfunc:
    """What mlflow.pyfunc.load_model returns the predict of: (num_images, seed) -> uint8."""

    def __init__(self, module: nn.Module, latent_dim: int) -> None:
        self.module, self.latent_dim = module, latent_dim

    def predict(self, model_input: Any = None, params: dict[str, Any] | None = None) -> np.ndarray:
        params = params or {}
        n = int(params.get("num_images", DEFAULT_NUM_IMAGES))
        seed = int(params.get("seed", 0))
        if not 1 <= n <= MAX_NUM_IMAGES:
            raise ValueError(f"num_images={n} is invalid: must be in [1, {MAX_NUM_IMAGES}]")
        return generate_uint8(self.module, self.latent_dim, n, seed).numpy()


def generate_uint8(module: nn.Module, latent_dim: int, n: int, seed: int) -> torch.Tensor:
    """n images from the latents `seed` stands for: the very images the training run
    scored at that seed (gan.sampling), so a re-evaluation reproduces its score."""
    from gan.sampling import generate_uint8 as generate
    from gan.sampling import sample_latents

    return generate(module, sample_latents(n, latent_dim, seed))


def _load_pyfunc(data_path: str, model_config: Any = None) -> GeneratorPyfunc:
    """MLflow's pyfunc loader hook (named by the MLmodel's loader_module)."""
    meta = json.loads((Path(data_path) / META_FILE).read_text())
    module = torch.export.load(str(Path(data_path) / "model.pt2")).module()
    return GeneratorPyfunc(module, meta["latent_dim"])
