"""The champion serves anywhere, as docs/registry-and-serving.md tells a user to serve it: a registered
champion is downloaded with `mlflow artifacts download`, copied into a folder of a fresh
virtual environment that holds only the model's own requirements.txt (mlflow, numpy,
pandas, pillow, torch and what they require: no gan-pipelines), and served there by
`mlflow models serve --env-manager local`; REST answers are the images training scored at
each seed, bad requests get a 400, and `mlflow models predict` answers the same.

The environment is built by tests/serving_env.py from the distributions pip installed for
this test run (seconds; checked by pip with --no-index and pip check), so CI runs this.
GAN_PIPELINES_SERVING_PIP=1 builds it with `pip install -r requirements.txt` from the
package index instead, as a user does (about 2 minutes and 6 GB here);
GAN_PIPELINES_SERVING_VENV=PATH reuses an environment built either way (it is still
checked for being clean)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, wait_for
from mlflow.entities import Metric, Param
from PIL import Image
from serving_env import build, clean_env

from gan.config import make_config
from gan.models import build_models
from gan.sampling import eval_view, generate_uint8, sample_latents
from pipelines.registry.promote import promote
from pipelines.tracking.generator_model import save_generator, served_requirements
from pipelines.tracking.models import log_model
from pipelines.tracking.names import CHAMPION
from pipelines.tracking.store import client_for, config_params, ensure_experiment

pytestmark = pytest.mark.integration
LATENT = 8
MODEL = f"models:/gan-generator@{CHAMPION}"


@pytest.fixture(scope="module")
def requirements(tmp_path_factory) -> Path:
    """requirements.txt of a generator model saved here: every one names the same pins."""
    G, _ = build_models(make_config({"dcgan_width": 4, "latent_dim": LATENT}), (1, 28, 28))
    return save_generator(G, tmp_path_factory.mktemp("reqs") / "model", LATENT) / "requirements.txt"


@pytest.fixture(scope="module")
def serving_venv(requirements):
    """A plain venv (no system site-packages) with the model's requirements.txt only."""
    reused = os.environ.get("GAN_PIPELINES_SERVING_VENV")
    if reused:
        yield Path(reused)
        return
    root = Path(tempfile.mkdtemp(prefix="gan-serving-venv-"))
    venv = root / "venv"
    try:
        yield build(venv, requirements, from_index=os.environ.get("GAN_PIPELINES_SERVING_PIP") == "1")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # 6 GB: never left behind


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """(serving box folder holding champion/, the training-side generator): a run logs a
    generator as training does, promote makes it the champion, and the guide's
    `mlflow artifacts download` exports it."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = client_for(uri)
    exp = ensure_experiment(client, "serving")
    cfg = make_config({"dcgan_width": 4, "latent_dim": LATENT})
    torch.manual_seed(0)
    G, _ = build_models(cfg, (1, 28, 28))
    with torch.no_grad():  # DCGAN's N(0, 0.02) init draws near-constant images: spread them
        for p in G.parameters():
            p.normal_(0, 0.5)
    rid = client.create_run(exp).info.run_id
    client.log_batch(rid, params=[Param(k, v) for k, v in config_params(cfg).items()])
    model_id = log_model(client, rid, cfg, G, (1, 28, 28), role="best,final", epoch=1, step=1)
    client.log_batch(rid, metrics=[Metric("fid", 4.0, 0, 1, model_id=model_id), Metric("epoch", 1.0, 0, 1)])
    client.set_terminated(rid, "FINISHED")
    promote(client, experiment="serving")
    subprocess.run([sys.executable, "-m", "mlflow", "artifacts", "download", "-u", MODEL, "-d", str(root / "export")],
                   check=True, timeout=300, capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    box = tmp_path_factory.mktemp("box")  # "another machine": only the copied folder
    shutil.copytree(root / "export", box / "champion")
    return box, G.eval()


@pytest.fixture(scope="module")
def server(serving_venv, champion):
    """`mlflow models serve -m champion --env-manager local` in the clean venv, on 127.0.0.1."""
    box, _ = champion
    port = free_port()
    log = open(box / "serve.log", "w")  # noqa: SIM115 - open while the server runs
    proc = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", "champion", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=box, env=clean_env(serving_venv), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (box / "serve.log").read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=300, every=0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the serve command and its uvicorn
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def decode(rows: list[dict]) -> np.ndarray:
    return np.stack([np.array(Image.open(io.BytesIO(base64.b64decode(r["png"]))))[None] for r in rows])


def scored(G: torch.nn.Module, n: int, seed: int) -> np.ndarray:
    """The images training scores at (n, seed): gan.sampling on the live module."""
    with eval_view(G):
        return generate_uint8(G, sample_latents(n, LATENT, seed)).numpy()


def test_the_serving_venv_has_the_models_requirements_and_no_gan_pipelines(serving_venv, champion, requirements):
    box, _ = champion
    assert (box / "champion" / "requirements.txt").read_text().split() == served_requirements()
    assert requirements.read_text() == (box / "champion" / "requirements.txt").read_text()
    python = str(serving_venv / "bin" / "python")
    for package in ("pipelines", "gan"):
        probe = subprocess.run([python, "-c", f"import {package}"], cwd=box, env=clean_env(serving_venv),
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and f"No module named '{package}'" in probe.stderr
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], env=clean_env(serving_venv),
                            capture_output=True, text=True, check=True, timeout=120).stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    assert "gan-pipelines" not in installed and "ray" not in installed
    for pin in served_requirements():
        name, version = pin.split("==")
        assert installed[name] == version


def test_rest_answers_are_the_images_training_scored(server, champion):
    _, G = champion
    rows = [{"seed": 3, "num_images": 5}, {"seed": 2**40, "num_images": 2}]
    status, answer = post(server, {"dataframe_records": rows})
    assert status == 200
    rows = answer["predictions"]
    assert [(r["seed"], r["index"]) for r in rows] == [(3, i) for i in range(5)] + [(2**40, 0), (2**40, 1)]
    np.testing.assert_array_equal(decode(rows[:5]), scored(G, 5, 3))
    np.testing.assert_array_equal(decode(rows[5:]), scored(G, 2, 2**40))

    params = {"num_images": 4, "seed": 11, "format": "array"}
    status, answer = post(server, {"dataframe_records": [{}], "params": params})
    assert status == 200
    array = np.array(answer["predictions"], dtype=np.int64)
    assert array.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(array, scored(G, 4, 11))


@pytest.mark.parametrize("body,names", [
    ({"dataframe_records": [{"seed": 0, "num_images": 10**9}]}, "num_images=1000000000"),
    ({"dataframe_records": [{"seed": 0, "num_images": 1025}]}, "num_images=1025"),
    ({"dataframe_records": [{"num_images": 600}, {"num_images": 600}]}, "num_images=1200 in all rows"),
    ({"dataframe_records": [{"seed": -1}]}, "seed=-1"),
    ({"dataframe_records": [{}], "params": {"seed": 2**63}}, "seed=9223372036854775808"),
    ({"dataframe_records": [{"seed": 10**30}]}, "seed"),
    ({"dataframe_records": [{}], "params": {"seed": "x"}}, "seed"),
    ({"dataframe_records": [{}], "params": {"format": "gif"}}, "format='gif'"),
])
def test_bad_requests_get_a_400_naming_the_field_and_the_server_keeps_serving(server, body, names):
    status, answer = post(server, body)
    assert status == 400 and names in answer["message"], answer
    assert urllib.request.urlopen(f"{server}/ping", timeout=5).status == 200


def test_mlflow_models_predict_in_the_clean_venv(serving_venv, champion):
    box, G = champion
    (box / "input.json").write_text(json.dumps({"dataframe_records": [{"seed": 5, "num_images": 3}]}))
    subprocess.run(["mlflow", "models", "predict", "-m", "champion", "-i", "input.json", "-t", "json",
                    "--env-manager", "local", "-o", "output.json"],
                   cwd=box, env=clean_env(serving_venv), check=True, capture_output=True, timeout=600)
    rows = json.loads((box / "output.json").read_text())["predictions"]
    np.testing.assert_array_equal(decode(rows), scored(G, 3, 5))
