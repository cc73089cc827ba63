"""The tracking store: which one (MLFLOW_TRACKING_URI, else ./mlflow.db), named so every
process finds it, checked writable before any run exists, an MlflowClient on it, the
experiment, and what a run's environment tags and UI link are.

Everything goes through MlflowClient with explicit run ids, not the fluent API's
process-local active run, so a Ray Train rank-0 worker can write to a run the driver
created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gan.config import RunConfig
from pipelines.errors import TrackingError
from pipelines.tracking import names

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_uri(uri: str) -> str:
    """The same store named from any working directory: Ray workers do not share ours."""
    db = sqlite_path(uri)
    if db is not None:
        return "sqlite:///" + str(db.expanduser().resolve())
    if urlparse(uri).scheme == "":
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI; None for any other store."""
    if not uri.startswith("sqlite:"):
        return None
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def check_writable(uri: str) -> None:
    """Fail before any run exists when a local store or artifact folder cannot be written."""
    db = sqlite_path(uri)
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
        return str(exp.experiment_id)
    location = None
    db = sqlite_path(client.tracking_uri)
    if db is not None:
        location = (db.expanduser().resolve().parent / "mlartifacts" / name).as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception:  # noqa: BLE001 - a concurrent creator won the race; use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def environment_tags(dataset: str, device: str) -> dict[str, str]:
    """Tags that explain where a run came from: git commit, package versions, data, device."""
    tags = {names.DATASET: dataset, names.DEVICE: device}
    for pkg in ("gan-pipelines", "torch", "torchvision", "ray", "mlflow", "optuna"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"{names.VERSION_PREFIX}{pkg}"] = metadata.version(pkg)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        if commit:
            tags[names.GIT_COMMIT] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def config_params(cfg: RunConfig, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The resolved config (plus `extra`: where it ran) as MLflow params."""
    params = {k: str(v) for k, v in cfg.to_dict().items()}
    params.update({k: str(v) for k, v in (extra or {}).items()})
    return params


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """The command (or URL) that opens the MLflow UI on a run."""
    url = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith("sqlite:"):
        return f"open it: mlflow ui --backend-store-uri {uri} --port 5000   then {url}"
    return f"open it: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
