"""The tracking store: which one (MLFLOW_TRACKING_URI, else ./mlflow.db), named so every
process finds it, checked writable before any run exists, an MlflowClient on it, the
experiment, and what a run's environment tags and UI link are.

Everything goes through MlflowClient with explicit run ids, not the fluent API's
process-local active run, so a Ray Train rank-0 worker can write to a run the driver
created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from gan.config import RunConfig
from pipelines.errors import TrackingError
from pipelines.tracking import names
from pipelines.tracking.folders import try_folder
from pipelines.tracking.sqlite_setup import open_client

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
    try:  # tried, not asked (root ignores modes), and nothing left: opening makes the folder
        try_folder(folder)
    except OSError as e:
        raise TrackingError(
            f"tracking store {uri!r} is not writable ({folder}: {e.strerror or e}): "
            "run from a writable folder or set MLFLOW_TRACKING_URI"
        ) from None


PROBE_TIMEOUT_S = 10.0
_DATABASES = ("postgresql", "mysql", "mssql")  # with +driver suffixes, e.g. postgresql+psycopg2


def redact(uri: str) -> str:
    """The URI without its password, for every line a user or a log sees."""
    parts = urlparse(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def probe_store(uri: str, timeout_s: float = PROBE_TIMEOUT_S, *, must_exist: bool = False) -> None:
    """Fail fast (bounded, one line) when the tracking store cannot be used, before any
    run or file exists: an unsupported scheme, a server or database that does not answer,
    a local folder that cannot be written, or (must_exist: a command that only reads,
    like promote) a local store that is not there, which opening would create empty."""
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("", "file", "sqlite"):
        db = sqlite_path(uri)
        if must_exist and db is not None and not db.expanduser().exists():
            raise TrackingError(f"no tracking store at {uri}: run from the folder your runs were recorded in, "
                                "or set MLFLOW_TRACKING_URI")
        check_writable(uri)
        return
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:  # noqa: S310
                if r.status == 200:
                    return
                reason = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            reason = str(getattr(e, "reason", "") or e)[:120]
        raise TrackingError(f"tracking server {redact(uri)} does not answer ({reason}) within {timeout_s:.0f} s: "
                            "start it, or fix MLFLOW_TRACKING_URI")
    if scheme in _DATABASES:
        parts = urlparse(uri)
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=timeout_s).close()
        except OSError as e:
            raise TrackingError(f"tracking database {redact(uri)} does not answer ({e.strerror or e}): "
                                "start it, or fix MLFLOW_TRACKING_URI") from None
        return
    raise TrackingError(f"tracking URI {redact(uri)!r} is invalid: scheme {scheme!r} is not supported "
                        "(use http(s)://HOST:PORT, sqlite:///FILE or postgresql://...)")


def client_for(uri: str | None = None) -> Any:
    """An MlflowClient on `uri` (default: tracking_uri()), quiet about its migrations; a
    new sqlite store is set up once even when another process opens it at the same moment
    (sqlite_setup). Nothing else changes: MLflow's global tracking URI and the environment
    stay as they are (code that needs MLflow's global URI sets it for a block: global_tracking_uri)."""
    uri = uri or tracking_uri()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return open_client(uri, sqlite_path(uri))


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-global tracking URI set to `uri` for the block only, for the MLflow
    code that reads it whichever client called it (loading a models:/ URI, the sqlite
    registry resolving a version's models:/ source, the fluent API). After the block it
    resolves as before and the environment (where MLflow writes it too) is as it was."""
    import mlflow

    before, env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None (which set_tracking_uri handles, its type says str): unset, follow the environment
        mlflow.set_tracking_uri(None if before == env else before)  # type: ignore[arg-type]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def ensure_experiment(client: Any, name: str) -> str:
    """The experiment's id, creating it once; local stores keep artifacts next to the db.
    Tagged as model development (also an older one without the tag): MLflow 3's UI
    otherwise opens it in the GenAI view, with no runs table."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {name!r} is deleted: restore it or pick another --experiment")
        if exp.tags.get(names.EXPERIMENT_KIND) != names.MODEL_DEVELOPMENT:
            with contextlib.suppress(Exception):  # a read-only user still gets to log runs
                client.set_experiment_tag(exp.experiment_id, names.EXPERIMENT_KIND, names.MODEL_DEVELOPMENT)
        return str(exp.experiment_id)
    location = None
    db = sqlite_path(client.tracking_uri)
    if db is not None:
        location = (db.expanduser().resolve().parent / "mlartifacts" / name).as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location,
                                            tags={names.EXPERIMENT_KIND: names.MODEL_DEVELOPMENT}))
    except Exception:  # noqa: BLE001 - a concurrent creator won the race; use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def environment_tags(dataset: str, device: str) -> dict[str, str]:
    """Tags that explain where a run came from: source commit, package versions, data, device."""
    tags = {names.DATASET: dataset, names.DEVICE: device, **source_tags()}
    for pkg in ("gan-pipelines", "torch", "torchvision", "ray", "mlflow", "optuna"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"{names.VERSION_PREFIX}{pkg}"] = metadata.version(pkg)
    return tags


def source_tags() -> dict[str, str]:
    """The code that ran: the commit of the package's own checkout (not of the working
    directory, which for a trial is Ray's trial folder), else the installed version."""
    package_dir = Path(__file__).resolve().parents[2]
    tags = {names.SOURCE_NAME: "gan-pipelines"}
    try:
        commit = subprocess.run(["git", "-C", str(package_dir), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        tags[names.GIT_COMMIT] = commit
    else:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[names.SOURCE_VERSION] = metadata.version("gan-pipelines")
    return tags


def config_params(cfg: RunConfig, extra: dict[str, Any] | None = None,
                  omit: tuple[str, ...] = ()) -> dict[str, str]:
    """The resolved config (plus `extra`: where it ran) as MLflow params; `omit`: fields
    that do not apply (a sweep's inactive conditional parameters; config.yaml keeps all)."""
    params = {k: str(v) for k, v in cfg.to_dict().items() if k not in omit}
    params.update({k: str(v) for k, v in (extra or {}).items()})
    return params


def ui_base(uri: str) -> str:
    """Where the MLflow UI of a store is: the server itself, or a local `mlflow ui`."""
    return redact(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def _page(base: str, path: str, query: dict[str, str]) -> str:
    # workflowType: MLflow 3's UI opens an experiment without it in its GenAI view
    return f"{base}/#/{path}?{urlencode({'workflowType': 'machine_learning', **query}, quote_via=quote)}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return _page(base, f"experiments/{experiment_id}/runs/{run_id}", {})


def runs_table_url(base: str, experiment_id: str, sweep: str | None = None) -> str:
    """The experiment's runs table; for a sweep, its saved view (share_sweep_view)."""
    query = {"viewStateShareKey": sweep_view_key(sweep)} if sweep else {}
    return _page(base, f"experiments/{experiment_id}/runs", query)


def sweep_view_key(sweep: str) -> str:
    return "sweep-" + hashlib.sha256(sweep.encode()).hexdigest()[:12]


def share_sweep_view(client: Any, experiment_id: str, sweep: str, params: list[str]) -> None:
    """A saved view of the runs table that the printed URL opens (MLflow's UI reads the
    experiment tag mlflow.sharedViewState.KEY; URL query parameters cannot choose
    columns): the sweep's trials only (flat, not folded under the parent), best first,
    with their FIDs, sampled `params` and why each stopped as the columns after the run
    name (the table draws only the columns in view, so no others come first)."""
    columns = [f"metrics.`{names.BEST_FID}`", f"metrics.`{names.FID}`", f"metrics.`{names.EPOCH}`",
               *(f"params.`{p}`" for p in params), f"tags.`{names.STOPPED_REASON}`"]
    state = {"searchFilter": f"tags.{names.SWEEP_NAME} = '{sweep}' and tags.{names.TRIAL_ID} LIKE '%'",
             "orderByKey": f"metrics.`{names.BEST_FID}`", "orderByAsc": True, "startTime": "ALL",
             "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
             "selectedColumns": columns}
    client.set_experiment_tag(experiment_id, f"{names.SHARED_VIEW_PREFIX}{sweep_view_key(sweep)}", json.dumps(state))


def ui_hint(uri: str, experiment_id: str, run_id: str, *, sweep: str | None = None,
            parent_run_id: str | None = None) -> str:
    """The command (for a local store) and the URLs that open the MLflow UI on a run, and
    for a sweep on its trials table and its report (the parent run)."""
    base = ui_base(uri)
    lines = [f"open it: mlflow ui --backend-store-uri {uri} --port 5000   then"] if uri.startswith("sqlite:") \
        else ["open it:"]
    if sweep:
        lines.append(f"  trials, best first: {runs_table_url(base, experiment_id, sweep)}")
        lines.append(f"  best trial:         {run_url(base, experiment_id, run_id)}")
        if parent_run_id:
            lines.append(f"  sweep report:       {run_url(base, experiment_id, parent_run_id)}")
    else:
        lines.append(f"  {run_url(base, experiment_id, run_id)}")
    return "\n".join(lines)


_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def is_not_found(error: BaseException) -> bool:
    """Is this MLflow's answer that a run, model, version or alias does not exist?"""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return False
    if error.error_code in _NOT_FOUND:
        return True
    # An existing registered model without the alias answers INVALID_PARAMETER_VALUE
    # ("Registered model alias champion not found."); an unknown run id the same way.
    text = str(error).lower()
    return error.error_code == "INVALID_PARAMETER_VALUE" and ("not found" in text or "no run" in text)
