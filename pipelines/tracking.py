"""MLflow tracking: store resolution, run set-up, and the training-loop callbacks that
write one run's story (params, batched per-step metrics, sample grids with their step,
checkpoints, progress GIF, generator model).

Everything goes through MlflowClient with an explicit run id, not the fluent API's
process-local active run, so a Ray Train rank-0 worker can write to a run the driver
created. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from torch import nn

from gan.checkpoint import checkpoint_name, load_checkpoint, save_checkpoint
from gan.config import RunConfig
from gan.sampling import save_gif
from gan.train import Callbacks

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
GRID_KEY = "samples"
CHECKPOINT_DIR = "checkpoints"
# log_image names files KEY+step+N+timestamp+T+UUID.png ('%' in older MLflow versions).
_GRID_FILE = re.compile(rf"^{GRID_KEY}[+%]step[+%](\d+)[+%]timestamp[+%]\d+[+%][^+%]+\.png$")

log = logging.getLogger(__name__)


class TrackingError(ValueError):
    """The tracking store or a run cannot be used; the message is one line for the user."""


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """The same store named from any working directory: Ray workers do not share ours."""
    db = _sqlite_path(uri)
    if db is not None:
        return "sqlite:///" + str(db.expanduser().resolve())
    if urlparse(uri).scheme == "":
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def check_writable(uri: str) -> None:
    """Fail before any run exists when a local store or artifact folder cannot be written."""
    db = _sqlite_path(uri)
    if db is not None:
        folder = db.expanduser().resolve().parent
    elif urlparse(uri).scheme in ("", "file"):
        folder = Path(urlparse(uri).path or uri).expanduser().resolve()
    else:
        return  # a server: it owns its storage
    try:  # the real test: the folder can be made and a file written in it (root ignores modes)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe"):
            pass
    except OSError as e:
        raise TrackingError(
            f"tracking store {uri!r} is not writable ({folder}: {e.strerror or e}): "
            "run from a writable folder or set MLFLOW_TRACKING_URI"
        ) from None


def client_for(uri: str | None = None) -> Any:
    """An MlflowClient on `uri` (default: tracking_uri()), quiet about its migrations."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(uri)


def ensure_experiment(client: Any, name: str) -> str:
    """The experiment's id, creating it once; local stores keep artifacts next to the db."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted: restore it or pick another --experiment")
        return exp.experiment_id
    location = None
    db = _sqlite_path(client.tracking_uri)
    if db is not None:
        location = (db.expanduser().resolve().parent / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - a concurrent creator won the race; use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def environment_tags(dataset: str, device: str) -> dict[str, str]:
    """Tags that explain where a run came from: git commit, package versions, data, device."""
    tags = {"dataset": dataset, "device": device}
    for pkg in ("gan-pipelines", "torch", "torchvision", "ray", "mlflow", "optuna"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{pkg}"] = metadata.version(pkg)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        if commit:
            tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def config_params(cfg: RunConfig, extra: dict[str, Any] | None = None) -> dict[str, str]:
    params = {k: str(v) for k, v in cfg.to_dict().items()}
    params.update({k: str(v) for k, v in (extra or {}).items()})
    return params


def last_logged_step(client: Any, run_id: str) -> int:
    """The highest step already logged for the per-step losses (0 for a fresh run)."""
    history = client.get_metric_history(run_id, "d_loss")
    return max((m.step for m in history), default=0)


def latest_checkpoint(client: Any, run_id: str, dest: str | Path) -> dict[str, Any] | None:
    """Download and load (weights_only) the newest checkpoint artifact of a run."""
    names = sorted(a.path for a in client.list_artifacts(run_id, CHECKPOINT_DIR) if a.path.endswith(".pt"))
    if not names:
        return None
    local = client.download_artifacts(run_id, names[-1], str(dest))
    return load_checkpoint(local)


def logged_eval_history(client: Any, run_id: str) -> list[tuple[int, dict[str, float]]]:
    """The eval metrics a run holds, by step: every metric logged at an eval step (the
    steps of the `epoch` metric that on_eval writes) other than the per-step losses."""
    from gan.train import STEP_METRICS

    eval_steps = {m.step for m in client.get_metric_history(run_id, "epoch")}
    keys = set(client.get_run(run_id).data.metrics) - set(STEP_METRICS) - {"epoch"}
    history: dict[int, dict[str, float]] = {s: {} for s in eval_steps}
    for key in sorted(keys):
        for m in client.get_metric_history(run_id, key):
            if m.step in history:
                history[m.step][key] = m.value
    return sorted(history.items())


def logged_grids(client: Any, run_id: str, dest: str | Path) -> list[tuple[int, np.ndarray]]:
    """The sample grids a run already logged, by step (to rebuild the GIF after a resume)."""
    from PIL import Image

    frames = []
    for art in client.list_artifacts(run_id, "images"):
        m = _GRID_FILE.match(Path(art.path).name)
        if m:
            path = client.download_artifacts(run_id, art.path, str(dest))
            frames.append((int(m.group(1)), np.asarray(Image.open(path))))
    return sorted(frames, key=lambda f: f[0])


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
        # Chunks of 900: MLflow caps a log_batch at 1000 metrics.
        for i in range(0, len(batch), 900):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 900], synchronous=False)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        if self.rank != 0 or step <= self.floor:
            return
        from mlflow.entities import Metric

        self.frames.append((step, grid))
        self.client.log_image(self.run_id, grid, key=GRID_KEY, step=step)
        ts = _now_ms()
        values = {**metrics, "epoch": float(epoch)}
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()])

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        if self.rank != 0 or step < self.floor:
            return
        with tempfile.TemporaryDirectory(prefix="gan-ckpt-") as tmp:
            self.log_checkpoint(save_checkpoint(state, Path(tmp) / checkpoint_name(epoch)), step)

    def log_checkpoint(self, path: Path, step: int) -> None:
        """Upload a checkpoint file someone already wrote (a Ray Train worker's, say)."""
        if self.rank == 0 and step >= self.floor:
            self.client.log_artifact(self.run_id, str(path), CHECKPOINT_DIR)


def log_progress_gif(client: Any, run_id: str, frames: list[tuple[int, np.ndarray]]) -> None:
    """The (step, grid) frames as progress.gif in step order; nothing when there are none."""
    if not frames:
        return
    with tempfile.TemporaryDirectory() as tmp:
        ordered = [f for _, f in sorted(frames, key=lambda f: f[0])]
        client.log_artifact(run_id, str(save_gif(ordered, Path(tmp) / "progress.gif")))


def log_generator(client: Any, run_id: str, generator: nn.Module, latent_dim: int) -> str:
    """Log G as the run's `generator` MLflow model (see pipelines.generator_model); saved
    then uploaded, so no fluent active run is needed. Returns its runs:/ URI."""
    from pipelines.generator_model import save_generator

    with tempfile.TemporaryDirectory() as tmp:
        path = save_generator(generator, Path(tmp) / "generator", latent_dim)
        client.log_artifacts(run_id, str(path), "generator")
    return f"runs:/{run_id}/generator"


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """The command (or URL) that opens the MLflow UI on a run."""
    url = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith("sqlite:"):
        return f"open it: mlflow ui --backend-store-uri {uri} --port 5000   then {url}"
    return f"open it: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


__all__ = ["MlflowCallbacks", "TrackingError", "client_for", "ensure_experiment", "log_generator", "tracking_uri"]
