"""The generator model stands on its own: its pyfunc loader is stored with it, imports no
gan/ or pipelines/, samples exactly as training scored, answers in PNGs or arrays, refuses
out-of-range requests with a 400 before doing any work, and models logged before it
still load. (tests/test_serving.py serves it from a venv without gan-pipelines.)"""

from __future__ import annotations

import ast
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gan.config import make_config
from gan.data import to_uint8
from gan.models import build_models
from gan.sampling import GENERATE_BATCH, eval_view, generate_uint8, sample_latents
from pipelines.tracking import served_generator as served
from pipelines.tracking.generator_model import load_generator, save_generator, served_requirements

LATENT = 8


def spread_generator(seed: int = 0) -> torch.nn.Module:
    """A small DCGAN whose images vary (N(0, 0.02) init draws near-constant ones)."""
    torch.manual_seed(seed)
    G, _ = build_models(make_config({"dcgan_width": 4, "latent_dim": LATENT}), (1, 28, 28))
    with torch.no_grad():
        for p in G.parameters():
            p.normal_(0, 0.5)
    return G.eval()


def training_images(G: torch.nn.Module, n: int, seed: int) -> np.ndarray:
    """What training scores at (n, seed): gan.sampling on the live module."""
    with eval_view(G):
        return generate_uint8(G, sample_latents(n, LATENT, seed)).numpy()


def decode(pngs) -> np.ndarray:
    """base64 PNGs of gray images -> uint8 [N, 1, H, W]."""
    return np.stack([np.array(Image.open(io.BytesIO(base64.b64decode(p))))[None] for p in pngs])


@pytest.fixture(scope="module")
def generator():
    return spread_generator()


@pytest.fixture(scope="module")
def model_dir(generator, tmp_path_factory):
    import copy

    return save_generator(copy.deepcopy(generator), tmp_path_factory.mktemp("model") / "generator", LATENT)


@pytest.fixture(scope="module")
def pyfunc(model_dir):
    import mlflow

    return mlflow.pyfunc.load_model(str(model_dir))


@pytest.mark.parametrize("n,dim,seed", [(1, 8, 0), (17, 100, 3), (600, 16, 2**40), (5, 8, served.MAX_SEED)])
def test_stored_sampling_draws_gan_samplings_latents_bit_for_bit(n, dim, seed):
    assert torch.equal(served.sample_latents(n, dim, seed), sample_latents(n, dim, seed))


def test_stored_generation_is_gan_samplings_bit_for_bit(generator):
    assert served.GENERATE_BATCH == GENERATE_BATCH
    x = torch.randn(4000) * 1.5  # past [-1, 1] too: both clamp
    assert torch.equal(served.to_uint8(x), to_uint8(x))
    z = sample_latents(600, LATENT, 5)  # three batches of 250, the last one short
    with eval_view(generator):
        assert torch.equal(served.generate_uint8(generator, z), generate_uint8(generator, z))
    with pytest.raises(served.NonFiniteImages):
        served.generate_uint8(lambda part: part * float("nan"), z)


def test_stored_loader_imports_only_the_pinned_public_packages():
    tree = ast.parse(Path(served.__file__).read_text())
    top = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    top |= {node.module.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    distributions = {"PIL": "pillow"}
    third_party = {distributions.get(m, m) for m in top if m not in sys.stdlib_module_names and m != "__future__"}
    assert third_party == set(served.REQUIREMENTS)
    assert not top & {"gan", "pipelines"}


def test_the_model_directory_names_only_pinned_public_packages_and_carries_its_code(model_dir):
    import yaml

    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    pyfunc_conf = mlmodel["flavors"]["python_function"]
    assert pyfunc_conf["loader_module"] == "served_generator" and pyfunc_conf["code"] == "code"
    assert (model_dir / "code" / "served_generator.py").read_text() == Path(served.__file__).read_text()
    assert mlmodel["flavors"]["pytorch"]["model_data"] == pyfunc_conf["data"] == "data"
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert requirements == served_requirements()
    assert [r.split("==")[0] for r in requirements] == list(served.REQUIREMENTS)
    assert all(r.count("==") == 1 and "+" not in r for r in requirements)
    assert "gan" not in (model_dir / "conda.yaml").read_text().replace("conda-forge", "")
    assert yaml.safe_load((model_dir / "python_env.yaml").read_text())["dependencies"] == ["-r requirements.txt"]
    params = json.loads(mlmodel["signature"]["params"])
    assert {p["name"]: p["default"] for p in params} == {"num_images": 64, "seed": 0, "format": "png"}


def test_png_and_array_faces_give_the_images_training_scored(pyfunc, generator):
    pngs = pyfunc.predict(pd.DataFrame(), params={"num_images": 5, "seed": 3})
    assert list(pngs.columns) == ["seed", "index", "png"] and list(pngs["index"]) == [0, 1, 2, 3, 4]
    expected = training_images(generator, 5, 3)
    np.testing.assert_array_equal(decode(pngs["png"]), expected)
    array = pyfunc.predict(pd.DataFrame(), params={"num_images": 5, "seed": 3, "format": "array"})
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, expected)

    # one row per request; a row's values win over the params
    rows = pd.DataFrame([{"seed": 7, "num_images": 2}, {"seed": 2**40, "num_images": 3}])
    both = pyfunc.predict(rows, params={"num_images": 50, "format": "array"})
    np.testing.assert_array_equal(both, np.concatenate([training_images(generator, 2, 7),
                                                        training_images(generator, 3, 2**40)]))
    assert list(pyfunc.predict(rows)["seed"]) == [7, 7, 2**40, 2**40, 2**40]


@pytest.mark.parametrize("params,rows,names", [
    ({"num_images": 0}, None, "num_images=0"),
    ({"num_images": served.MAX_IMAGES + 1}, None, "num_images=1025"),
    ({"num_images": 10**15}, None, "num_images=1000000000000000"),
    ({"seed": -1}, None, "seed=-1"),
    ({"seed": 2**63}, None, "seed=9223372036854775808"),
    ({"format": "gif"}, None, "format='gif'"),
    ({}, [{"seed": 1, "num_images": 10**9}], "num_images=1000000000"),
    ({}, [{"seed": -5, "num_images": 1}], "seed=-5"),
    ({}, [{"num_images": 600}, {"num_images": 600}], "num_images=1200 in all rows"),
])
def test_out_of_range_requests_are_a_400_that_names_the_field(pyfunc, params, rows, names):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as refused:
        pyfunc.predict(pd.DataFrame(rows or []), params=params)
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE" and refused.value.get_http_status_code() == 400
    assert names in refused.value.message and "must be" in refused.value.message


def test_the_model_loads_and_generates_where_gan_and_pipelines_cannot_be_imported(model_dir, generator, tmp_path):
    # A process in which `import gan` / `import pipelines` fail as on a serving box; the
    # clean venv of tests/test_serving.py checks the packages themselves.
    script = f"""
import importlib.abc, sys
class NoProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("gan", "pipelines"):
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, NoProject())
import mlflow, numpy, pandas
model = mlflow.pyfunc.load_model({str(model_dir)!r})
out = model.predict(pandas.DataFrame(), params={{"num_images": 4, "seed": 9, "format": "array"}})
numpy.save({str(tmp_path / "out.npy")!r}, out)
assert not any(m.split(".")[0] in ("gan", "pipelines") for m in sys.modules)
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, capture_output=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), training_images(generator, 4, 9))


def save_legacy_generator(G: torch.nn.Module, path: Path, loader: str) -> Path:
    """A model as gan-pipelines logged it before the loader was stored with the model:
    loader_module `loader`, no code, gan-pipelines in its requirements."""
    import mlflow
    from mlflow.models import Model, ModelSignature, infer_signature
    from mlflow.pyfunc import add_to_model
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    z = np.random.default_rng(0).standard_normal((4, LATENT)).astype(np.float32)
    with torch.no_grad():
        out = G(torch.from_numpy(z)).numpy()
    mlflow.pytorch.save_model(G, str(path), input_example=z, signature=infer_signature(z, out),
                              serialization_format="pt2",
                              pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "gan-pipelines"])
    model = Model.load(str(path / "MLmodel"))
    data = model.flavors["pytorch"]["model_data"]
    (path / data / "generator.json").write_text(json.dumps({"latent_dim": LATENT, "image_shape": [1, 28, 28]}))
    model.flavors.pop("python_function", None)
    add_to_model(model, loader_module=loader, data=data, env={"virtualenv": "python_env.yaml"})
    model.signature = ModelSignature(
        inputs=Schema([ColSpec("long", "seed", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 1, 28, 28))]),
        params=ParamSchema([ParamSpec("num_images", "long", 64), ParamSpec("seed", "long", 0)]),
    )
    model.saved_input_example_info = None
    for example in ("input_example.json", "serving_input_example.json"):
        (path / example).unlink(missing_ok=True)
    model.save(str(path / "MLmodel"))
    return path


@pytest.mark.parametrize("loader", ["pipelines.tracking.generator_model", "pipelines.generator_model"])
def test_models_logged_before_the_stored_loader_still_load_where_the_package_is(generator, tmp_path, loader):
    import copy

    import mlflow

    from pipelines.registry.generate import generate_images

    path = save_legacy_generator(copy.deepcopy(generator), tmp_path / "old", loader)
    old = mlflow.pyfunc.load_model(str(path))
    images = old.predict(pd.DataFrame(), params={"num_images": 6, "seed": 2})  # uint8, as it always answered
    np.testing.assert_array_equal(images, training_images(generator, 6, 2))
    module, latent_dim = load_generator(str(path))  # what generate and evaluate use
    assert latent_dim == LATENT
    np.testing.assert_array_equal(generate_images(str(path), 6, 2), images)


def test_the_serving_hint_never_shows_the_stores_password():
    from pipelines.registry.generate import serving_hint

    hint = serving_hint("models:/gan-generator@champion", "http://alice:s3cret@127.0.0.1:5000")
    assert "s3cret" not in hint and "alice:***@127.0.0.1:5000" in hint
    assert "mlflow models serve -m models:/gan-generator@champion --env-manager local -h 127.0.0.1" in hint
