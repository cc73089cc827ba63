"""The generator as an MLflow model with two faces, self-contained: it loads and serves
where only its requirements.txt is installed (mlflow, numpy, pandas, pillow and torch,
pinned; never this package).

- pytorch flavor: the plain module (a torch.export pt2 program), mapping latents
  [N, latent_dim] to images in [-1, 1]: `mlflow.pytorch.load_model(uri)(z)`.
- python_function flavor: its loader is code/served_generator.py, stored with the model
  (pipelines/tracking/served_generator.py, which says the request and response forms):
  `mlflow.pyfunc.load_model(uri).predict(None, params={"num_images": 16, "seed": 0})`
  gives PNGs (base64) and `params={..., "format": "array"}` uint8 [N, C, H, W]; the same
  model answers `mlflow models serve`.

Models logged before the code was stored name this module (or pipelines.generator_model)
as their loader: `_load_pyfunc` keeps them loading where gan-pipelines is installed.
"""

from __future__ import annotations

import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.tracking import served_generator as served

META_FILE = served.META_FILE
DEFAULT_NUM_IMAGES = served.DEFAULT_NUM_IMAGES
LEGACY_MAX_NUM_IMAGES = 10_000  # what the loader of models logged before 0.2 allowed


def served_requirements() -> list[str]:
    """requirements.txt of every generator model: the distributions the stored loader
    imports, pinned to the versions it was saved and tested with. Public names only,
    without a local label (2.14.1+cpu -> 2.14.1): the public index has no such build."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in served.REQUIREMENTS]


def save_generator(generator: nn.Module, path: str | Path, latent_dim: int) -> Path:
    """Write the two-flavor model directory at `path` (which must not exist)."""
    import mlflow
    from mlflow.models import Model, ModelSignature, infer_signature
    from mlflow.pyfunc import add_to_model
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    path = Path(path)
    generator = generator.cpu().eval()
    z = np.random.default_rng(0).standard_normal((4, latent_dim)).astype(np.float32)
    with torch.no_grad():
        out = generator(torch.from_numpy(z)).numpy()
    mlflow.pytorch.save_model(
        generator, str(path), input_example=z, signature=infer_signature(z, out), serialization_format="pt2",
        code_paths=[served.__file__], pip_requirements=served_requirements(),
    )
    model = Model.load(str(path / "MLmodel"))
    conf = model.flavors["pytorch"]
    data = conf["model_data"]
    meta = {"latent_dim": latent_dim, "image_shape": list(out.shape[1:])}
    (path / data / META_FILE).write_text(json.dumps(meta))
    # The pyfunc face takes counts and seeds, not latents: the stored loader, its signature.
    model.flavors.pop("python_function", None)
    add_to_model(model, loader_module=Path(served.__file__).stem, data=data, code=conf["code"],
                 conda_env="conda.yaml", python_env="python_env.yaml")
    model.signature = ModelSignature(
        inputs=Schema([ColSpec("long", "seed", required=False), ColSpec("long", "num_images", required=False)]),
        outputs=Schema([ColSpec("long", "seed"), ColSpec("long", "index"), ColSpec("string", "png")]),
        params=ParamSchema([ParamSpec("num_images", "long", DEFAULT_NUM_IMAGES), ParamSpec("seed", "long", 0),
                            ParamSpec("format", "string", served.FORMATS[0])]),
    )
    model.saved_input_example_info = None  # type: ignore[assignment]  # MLflow's own way to drop it
    for example in ("input_example.json", "serving_input_example.json"):
        (path / example).unlink(missing_ok=True)
    model.save(str(path / "MLmodel"))
    return path


def load_generator(model_uri: str) -> tuple[nn.Module, int]:
    """(exported generator, latent_dim) behind any model URI, old or new: for this package's
    own consumers (generate, evaluate), which sample it with gan.sampling itself, the code
    training scored with, and need no per-request cap."""
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="gan-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        flavors = Model.load(str(local / "MLmodel")).flavors
        if "pytorch" not in flavors:
            raise ValueError(f"not a generator model: its flavors are {sorted(flavors)}, not pytorch")
        data = local / flavors["pytorch"]["model_data"]
        meta = json.loads((data / META_FILE).read_text())
        module = torch.export.load(str(data / served.PROGRAM_FILE)).module()
    return module, int(meta["latent_dim"])


class GeneratorPyfunc:
    """The pyfunc of models logged before the loader was stored with them:
    (num_images, seed) -> uint8 [N, C, H, W], as they always answered."""

    def __init__(self, module: nn.Module, latent_dim: int) -> None:
        self.module, self.latent_dim = module, latent_dim

    def predict(self, model_input: Any = None, params: dict[str, Any] | None = None) -> np.ndarray:
        params = params or {}
        n = int(params.get("num_images", DEFAULT_NUM_IMAGES))
        seed = int(params.get("seed", 0))
        if not 1 <= n <= LEGACY_MAX_NUM_IMAGES:
            raise ValueError(f"num_images={n} is invalid: must be in [1, {LEGACY_MAX_NUM_IMAGES}]")
        return generate_uint8(self.module, self.latent_dim, n, seed).numpy()


def generate_uint8(module: nn.Module, latent_dim: int, n: int, seed: int) -> torch.Tensor:
    """n images from the latents `seed` stands for: the very images the training run
    scored at that seed (gan.sampling), so a re-evaluation reproduces its score."""
    from gan.sampling import generate_uint8 as generate
    from gan.sampling import sample_latents

    return generate(module, sample_latents(n, latent_dim, seed))


def _load_pyfunc(data_path: str, model_config: Any = None) -> GeneratorPyfunc:
    """MLflow's pyfunc loader hook for models whose MLmodel names this module."""
    meta = json.loads((Path(data_path) / META_FILE).read_text())
    module = torch.export.load(str(Path(data_path) / served.PROGRAM_FILE)).module()
    return GeneratorPyfunc(module, meta["latent_dim"])
