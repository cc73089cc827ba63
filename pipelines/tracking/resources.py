"""What a run used: MLflow system metrics while it trains (CPU, memory, disk, network and
NVIDIA GPUs, under system/ in the run's charts), the Ray node it ran on, and a resource
summary at its end (wall s, CPU-hours, GPU-hours, peak memory) that the sweep's summary
table lists per trial."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

from pipelines.compat.mlflow_api import monitor_started
from pipelines.tracking import names

FIRST_SAMPLING_S = 1.0  # a run's first minute: a trial of a few seconds still gets samples
SAMPLING_S = 5.0  # the interval it grows to (MLflow's default is 10 s)
_GROWS_OVER_S = 60.0  # the interval in between: the run's age / 60 (a 1 h run: ~800 samples)


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str, *, resumed: bool = False) -> Iterator[None]:
    """MLflow's SystemMetricsMonitor on `run_id` while the block runs (no fluent active run
    needed), sampling every second at first and less often as the run goes on, with a last
    sample when the block ends: a run of any length has system metrics. A resumed run
    continues their steps. Never fails the run."""
    monitor = None
    try:
        # ERROR: a sample the server could not take (it is away) is no news; the run says so
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        monitor = _monitor(run_id, tracking_uri, resumed)
        monitor.start()
    except Exception as e:  # noqa: BLE001 - e.g. psutil missing: train anyway
        print(f"note: no system metrics: {e}", file=sys.stderr)
        monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()


def _monitor(run_id: str, tracking_uri: str, resumed: bool) -> Any:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Monitor(SystemMetricsMonitor):
        """MLflow's monitor with an interval that grows with the run's age (its loop reads
        sampling_interval before each wait), and a last sample on finish: MLflow's loop
        drops what it collected since its last publish when it is told to stop."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.fixed: float | None = None
            super().__init__(run_id, sampling_interval=None, samples_before_logging=1, resume_logging=resumed,
                             tracking_uri=tracking_uri)

        @property
        def sampling_interval(self) -> float:
            if self.fixed is not None:  # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL set: it wins
                return self.fixed
            age = time.monotonic() - self.started
            return min(SAMPLING_S, max(FIRST_SAMPLING_S, age / _GROWS_OVER_S))

        @sampling_interval.setter
        def sampling_interval(self, value: float | None) -> None:
            self.fixed = value  # MLflow's __init__: the environment's interval, else None

        def finish(self) -> None:
            if not monitor_started(self):  # its thread never started: nothing to flush
                return
            super().finish()  # the loop stopped and what it published flushed
            self.collect_metrics()
            self.publish_metrics(self.aggregate_metrics())
            self.mlflow_logger.flush()

    return Monitor()


def ray_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None
    except Exception:  # noqa: BLE001
        return None


def peak_memory_mb() -> float:
    """This process's peak resident memory (a reused Ray actor: over all its trials so far)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def log_resources(client: Any, run_id: str, started: float, cpus: float, gpus: float) -> dict[str, float]:
    """The run's resource summary as metrics (and its node as a tag); returns the numbers."""
    from mlflow.entities import Metric

    wall = time.time() - started
    usage = {names.WALL_S: wall, names.CPU_HOURS: wall * cpus / 3600, names.GPU_HOURS: wall * gpus / 3600,
             names.PEAK_MEMORY_MB: peak_memory_mb()}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in usage.items()])
    node = ray_node_id()
    if node:
        client.set_tag(run_id, names.NODE_ID, node)
    return usage


def log_queued(client: Any, run_id: str) -> float | None:
    """Called in a Ray Train worker when its group starts: adds the time the group's
    placement group waited for its resources to the run's QUEUED_S and returns it (None
    outside a placement group)."""
    import ray.util

    group = ray.util.get_current_placement_group()
    if group is None:
        return None
    stats = ray.util.placement_group_table(group).get("stats", {})
    waited = float(stats.get("end_to_end_creation_latency_ms", 0.0)) / 1000
    so_far = client.get_run(run_id).data.metrics.get(names.QUEUED_S, 0.0)
    client.log_metric(run_id, names.QUEUED_S, so_far + waited)
    return waited


def log_eval_share(client: Any, run_id: str, seconds: dict[str, Any]) -> None:
    """Training vs scoring seconds of the loop (TrainResult.seconds) and their ratio: what
    periodic evaluation cost this run (the eval budget's share; the final eval included)."""
    from mlflow.entities import Metric

    train_s, eval_s = float(seconds.get("train_s", 0.0)), float(seconds.get("eval_s", 0.0))
    if train_s <= 0:
        return
    now = int(time.time() * 1000)
    values = {names.TRAIN_S: train_s, names.EVAL_S: eval_s, names.EVAL_SHARE: eval_s / train_s}
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
