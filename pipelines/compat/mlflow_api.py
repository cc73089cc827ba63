"""MLflow's private APIs and undocumented conventions that pipelines/ relies on, each
wrapped once, and check() that verifies them all against the installed MLflow (written
against mlflow TESTED; pyproject.toml pins it). MLflow loads inside the functions:
importing this module does not import MLflow.

A missing or changed one raises InternalsChanged, here and at the call site: none turns
into a silent success (a run without its dataset, a monitor that never flushes).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from pipelines.compat.changed import Library

TESTED = "3.17"
MLFLOW = Library("mlflow", TESTED, "pipelines/compat/mlflow_api.py")

TO_ENTITY = "mlflow.data.dataset.Dataset._to_mlflow_entity"
MONITOR = "mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor"
LOG_IMAGE = "mlflow.MlflowClient.log_image"
# Experiment tags only MLflow's UI reads (its JavaScript bundle; no Python API writes them):
# a saved runs-table view (PREFIX + KEY), and which view an experiment opens in.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"  # the classic runs table, not the GenAI view


def dataset_entity(dataset: Any) -> Any:
    """The mlflow.entities.Dataset of an mlflow.data Dataset, for MlflowClient.log_inputs
    (the fluent mlflow.log_input converts it so; the client takes only the entity)."""
    from mlflow.entities import Dataset as DatasetEntity

    entity = MLFLOW.attr(dataset, "_to_mlflow_entity", TO_ENTITY)()
    if not isinstance(entity, DatasetEntity):
        raise MLFLOW.changed(TO_ENTITY, f"returns a {type(entity).__name__}, not mlflow.entities.Dataset")
    return entity


def monitor_started(monitor: Any) -> bool:
    """Whether a SystemMetricsMonitor's sampling thread was started (start() may have
    failed, or not been called: finish() has nothing to flush then)."""
    return MLFLOW.attr(monitor, "_process", f"{MONITOR}._process") is not None


def image_file_pattern(key: str) -> re.Pattern[str]:
    """The file names MlflowClient.log_image(key=key, step=N) gives its PNG under images/:
    KEY+step+N+timestamp+T+UUID.png ('%' for '+' in runs older MLflow versions logged,
    '/' in a key written '~'); group 1 is the step."""
    sep = "[+%]"
    name = re.escape(key.replace("/", "~"))
    return re.compile(rf"^{name}{sep}step{sep}(\d+){sep}timestamp{sep}\d+{sep}[^+%]+\.png$")


def check() -> None:
    """Verify every internal this module wraps against the installed MLflow;
    InternalsChanged (naming the API and the version) for the first one gone or changed."""
    import numpy as np
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.numpy_dataset import from_numpy

    entity = dataset_entity(from_numpy(np.zeros((2, 1, 2, 2), np.uint8), source=HTTPDatasetSource("https://x"),
                                       name="probe", digest="probe"))
    if (entity.name, entity.digest) != ("probe", "probe"):
        raise MLFLOW.changed(TO_ENTITY, "no longer carries the dataset's name and digest")

    monitor = MLFLOW.attr(MLFLOW.module_of(MONITOR.rpartition(".")[0]), "SystemMetricsMonitor", MONITOR)
    MLFLOW.uses(monitor, "__init__", MONITOR, "_process", "sampling_interval", "mlflow_logger")
    MLFLOW.uses(monitor, "start", MONITOR, "_process")
    MLFLOW.uses(monitor, "finish", MONITOR, "_process")
    MLFLOW.uses(monitor, "monitor", MONITOR, "sampling_interval")  # its loop reads it before each wait
    for method in ("collect_metrics", "aggregate_metrics", "publish_metrics"):
        if not callable(getattr(monitor, method, None)):
            raise MLFLOW.changed(f"{MONITOR}.{method}", "is gone")

    files = _logged_image_files("samples/probe", step=7)
    pattern = image_file_pattern("samples/probe")
    steps = [m.group(1) for f in files if (m := pattern.match(posixpath.basename(f)))]
    if steps != ["7"] or not all(f.startswith("images/") for f in files):
        raise MLFLOW.changed(f"{LOG_IMAGE}'s file names", f"no longer match KEY+step+N+timestamp+T+UUID.png: {files}")

    bundle = Path(MLFLOW.module_of("mlflow").__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(f.read_text(errors="replace") for f in bundle.glob("*.js"))
    for tag in (SHARED_VIEW_PREFIX, EXPERIMENT_KIND, MODEL_DEVELOPMENT):
        if tag not in text:
            raise MLFLOW.changed(f"the UI's experiment tag {tag!r}", f"is not read by its bundle {bundle}")


def _logged_image_files(key: str, step: int) -> list[str]:
    """The artifact paths MlflowClient.log_image writes for `key` at `step` (nothing logged:
    its log_artifact and set_tag are recorded, not sent)."""
    import numpy as np
    from mlflow import MlflowClient

    class Recorder(MlflowClient):
        def __init__(self) -> None:  # no store: only what log_image would write
            self.files: list[str] = []

        def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
            self.files.append(posixpath.join(artifact_path or "", Path(local_path).name))

        def set_tag(self, *args: Any, **kwargs: Any) -> None:
            pass

    recorder = Recorder()
    recorder.log_image("probe", np.zeros((4, 4, 3), np.uint8), key=key, step=step, timestamp=1, synchronous=True)
    return [f for f in recorder.files if f.endswith(".png")]
