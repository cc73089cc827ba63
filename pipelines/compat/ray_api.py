"""Ray's private APIs that pipelines/ uses, each wrapped once, and check() that verifies
them all against the installed Ray (written against ray TESTED; pyproject.toml pins its
minor). Ray loads inside the functions: importing this module does not import Ray.

A missing or changed internal raises InternalsChanged, here and at the call site: none
turns into a silent success (a crashed trial into a prune, a failed rank into no cause).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from pipelines.compat.changed import Library

TESTED = "2.60"
RAY = Library("ray", TESTED, "pipelines/compat/ray_api.py")

SESSION = "ray.train._internal.session"  # the Tune trial's session: no public handle on its stop
PBT = "ray.tune.schedulers.PopulationBasedTraining"
PBT_STATE = "ray.tune.schedulers.pbt._PBTTrialState"
PBT_STATE_FIELDS = ("last_train_time", "last_perturbation_time", "last_score", "last_result")
TRIAL = "ray.tune.experiment.trial.Trial"
RUN_METADATA = "ray.tune.trainable.metadata._TrainingRunMetadata"
CONSTANTS = "ray._private.ray_constants"
# Ray turns a node address of 127.0.0.1 into the machine's own IP (so other machines could
# join) and its servers then listen on every interface, unless it believes multi-node
# clusters are off, as on macOS: then the node is 127.0.0.1 and every server binds loopback.
CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
USER_ERROR = "ray.train.v2._internal.exceptions.UserExceptionWithTraceback"
REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"  # logs with getLogger(__file__)
# Modules that log every checkpoint and restore at INFO under their own __name__.
STORAGE_LOGGERS = ("ray.tune.trainable.trainable", "ray.train._internal.storage",
                   "ray.train.v2._internal.execution.storage")


# ---------------------------------------------------------------- a Tune trial's session


def trial_session() -> Any:
    """The session of the Tune trial running in this process (Ray's own object: Tune's
    stop sets its stop_event). InternalsChanged when there is none: this is called only
    inside a trial, where Ray 2.60 always has one."""
    session = RAY.function(SESSION, "get_session")()
    if session is None:
        raise RAY.changed(f"{SESSION}.get_session()", "returned None in a Tune trial (no session to hear Tune's stop)")
    for name in ("stop_event", "_inter_actor_queue"):
        RAY.attr(session, name, f"{SESSION}._TrainSession.{name}")
    return session


def session_stopped(session: Any) -> bool:
    """Whether Tune stopped the trial of `session` (from trial_session()): its stop_event
    is set (Tune's stop, and its cleanup, set it), or Tune's cleanup shut the session
    down (get_session() no longer returns it)."""
    stop_event = RAY.attr(session, "stop_event", f"{SESSION}._TrainSession.stop_event")
    return bool(stop_event.is_set()) or RAY.function(SESSION, "get_session")() is not session


def report_queue(session: Any) -> Any:
    """The queue a distributed trial's workers report to Tune through (None until the first
    report creates it)."""
    return RAY.attr(session, "_inter_actor_queue", f"{SESSION}._TrainSession._inter_actor_queue")


# ---------------------------------------------------------------- PBT's record of each member


def pbt_resync(scheduler: Any, trial: Any, epoch: int, score: float, result: dict[str, Any]) -> None:
    """Seed PBT's record of `trial` as if it had just reported `result` (its `score`) at the
    perturbation epoch `epoch`, and hold the next round at least there."""
    state = _pbt_state(scheduler, trial)
    state.last_train_time = state.last_perturbation_time = epoch
    state.last_score = RAY.attr(scheduler, "_metric_op", f"{PBT}._metric_op") * score
    state.last_result = result
    scheduler._next_perturbation_sync = max(_next_sync(scheduler), epoch)


def pbt_next_round(scheduler: Any, waiting: Iterable[Any]) -> None:
    """Move PBT's next synchronous round one interval past the furthest-behind of `waiting`."""
    ahead = min(_pbt_state(scheduler, t).last_train_time for t in waiting)
    _next_sync(scheduler)
    scheduler._next_perturbation_sync = ahead + RAY.attr(scheduler, "_perturbation_interval",
                                                         f"{PBT}._perturbation_interval")


def pbt_exploit_saved(trial: Any) -> None:
    """Make Tune save the donor's checkpoint PBT just handed `trial` (PBT._exploit sets it
    on the trial's checkpoint manager, which does not mark the trial's saved run metadata
    stale): else, until the member's next result, Tune's experiment state holds the donor's
    config with the member's own checkpoint, and a driver killed then resumes the member on
    its own weights with the copied values (and structure) of another."""
    metadata = RAY.attr(trial, "run_metadata", f"{TRIAL}.run_metadata")
    RAY.attr(metadata, "invalidate_cache", f"{RUN_METADATA}.invalidate_cache")()


def _pbt_state(scheduler: Any, trial: Any) -> Any:
    state = RAY.attr(scheduler, "_trial_state", f"{PBT}._trial_state")[trial]
    for name in PBT_STATE_FIELDS:  # setting a field Ray no longer reads would do nothing, silently
        RAY.attr(state, name, f"{PBT_STATE}.{name}")
    return state


def _next_sync(scheduler: Any) -> Any:
    return RAY.attr(scheduler, "_next_perturbation_sync", f"{PBT}._next_perturbation_sync")


# ---------------------------------------------------------------- function trainables


def with_mixins(trainable: Any, *mixins: type) -> Any:
    """`trainable` (a function) whose Tune class inherits `mixins`: Ray's wrap_function
    reads a function's `__mixins__`. InternalsChanged when the class it builds does not."""
    trainable.__mixins__ = mixins
    wrap_function = RAY.function("ray.tune.trainable.function_trainable", "wrap_function")
    missing = [m.__name__ for m in mixins if not issubclass(wrap_function(trainable), m)]
    if missing:
        raise RAY.changed("ray.tune.trainable.function_trainable.wrap_function's __mixins__",
                          f"no longer mixes {', '.join(missing)} into the trainable")
    return trainable


# ---------------------------------------------------------------- a local node


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a local Ray starts in this block, its node is 127.0.0.1 and its servers (GCS,
    raylet, workers, agents) listen on loopback only. Its processes read CLUSTERS_ENV when
    they start; this one read it when it imported ray, so Ray's copy is set too. Both are
    restored after: joining a real cluster later must resolve this machine's own IP."""
    constants = RAY.module_of(CONSTANTS)
    saved_env = os.environ.get(CLUSTERS_ENV)
    saved_flag = RAY.attr(constants, "ENABLE_RAY_CLUSTER", f"{CONSTANTS}.ENABLE_RAY_CLUSTER")
    os.environ[CLUSTERS_ENV] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(CLUSTERS_ENV, None)
        else:
            os.environ[CLUSTERS_ENV] = saved_env


def local_cpus() -> float:
    """The CPUs ray.init gives a local node here (cgroup-aware, as Ray counts them)."""
    return float(RAY.function("ray._private.utils", "get_num_cpus")())


# ---------------------------------------------------------------- Train V2's errors


def worker_causes(error: BaseException) -> dict[int, BaseException]:
    """The exception each failed rank raised, by rank: a WorkerGroupError's worker_failures,
    each unwrapped from the traceback wrapper Train V2 puts around a worker's own exception.
    Empty for any other error (a controller's): it names no rank."""
    if not isinstance(error, _worker_group_error()):
        return {}
    failures = RAY.attr(error, "worker_failures", "ray.train.WorkerGroupError.worker_failures")
    return {rank: _unwrapped(e) for rank, e in sorted(failures.items())}


def _worker_group_error() -> type:
    return RAY.attr(RAY.module_of("ray.train"), "WorkerGroupError", "ray.train.WorkerGroupError")


def _unwrapped(error: BaseException) -> BaseException:
    module, _, name = USER_ERROR.rpartition(".")
    wrapper = RAY.attr(RAY.module_of(module), name, USER_ERROR)
    return RAY.attr(error, "_base_exc", f"{USER_ERROR}._base_exc") if isinstance(error, wrapper) else error


# ---------------------------------------------------------------- loggers


def report_logger_name() -> str:
    """The logger Ray Train V2 logs each worker's report under: its module's file path."""
    return str(RAY.attr(RAY.module_of(REPORT_LOGGER_MODULE), "__file__", f"{REPORT_LOGGER_MODULE}.__file__"))


def quiet_storage_loggers(level: int = logging.WARNING) -> None:
    """Raise the level of the loggers Ray logs each checkpoint and restore with (no Ray import)."""
    for name in STORAGE_LOGGERS:
        logging.getLogger(name).setLevel(level)


# ---------------------------------------------------------------- the check


def check() -> None:
    """Verify every internal this module wraps against the installed Ray; InternalsChanged
    (naming the API and the version) for the first one that is gone or changed."""
    RAY.function(SESSION, "get_session")
    session_class = RAY.attr(RAY.module_of(SESSION), "_TrainSession", f"{SESSION}._TrainSession")
    RAY.uses(session_class, "__init__", f"{SESSION}._TrainSession", "reset")  # reset() sets them up
    RAY.uses(session_class, "reset", f"{SESSION}._TrainSession", "stop_event", "_inter_actor_queue")
    RAY.uses(session_class, "finish", f"{SESSION}._TrainSession", "stop_event")  # Tune's stop and cleanup

    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2

    if not issubclass(PB2, PopulationBasedTraining):
        raise RAY.changed("ray.tune.schedulers.pb2.PB2", f"no longer subclasses {PBT}")
    pbt = PopulationBasedTraining(time_attr="epoch", metric="score", mode="min", perturbation_interval=2,
                                  hyperparam_mutations={"x": [1, 2]}, synch=True)
    if RAY.attr(pbt, "_trial_state", f"{PBT}._trial_state") != {}:
        raise RAY.changed(f"{PBT}._trial_state", "is no longer a dict of trial -> state")
    if RAY.attr(pbt, "_metric_op", f"{PBT}._metric_op") != -1.0:
        raise RAY.changed(f"{PBT}._metric_op", "is no longer -1.0 for mode='min'")
    if RAY.attr(pbt, "_perturbation_interval", f"{PBT}._perturbation_interval") != 2:
        raise RAY.changed(f"{PBT}._perturbation_interval", "no longer holds perturbation_interval")
    if _next_sync(pbt) != 2:
        raise RAY.changed(f"{PBT}._next_perturbation_sync", "no longer starts at perturbation_interval")
    state_class = RAY.attr(RAY.module_of("ray.tune.schedulers.pbt"), "_PBTTrialState", PBT_STATE)
    RAY.uses(state_class, "__init__", PBT_STATE, *PBT_STATE_FIELDS)
    # population.ResumablePBT overrides _exploit (a hook nothing would call if renamed), which
    # hands the donor's checkpoint over where the saved run metadata does not see it
    RAY.uses(PopulationBasedTraining, "_exploit", PBT, "run_metadata", "_latest_checkpoint_result")
    metadata_class = RAY.attr(RAY.module_of("ray.tune.trainable.metadata"), "_TrainingRunMetadata", RUN_METADATA)
    RAY.uses(metadata_class, "get_json_state", RUN_METADATA, "_cached_json")
    RAY.uses(metadata_class, "invalidate_cache", RUN_METADATA, "_cached_json")

    def probe(config: Any) -> None:
        """A function trainable (never run)."""

    class Probe:
        """A mixin with_mixins must see in the class Ray builds."""

    with_mixins(probe, Probe)

    constants = RAY.module_of(CONSTANTS)
    if not isinstance(RAY.attr(constants, "ENABLE_RAY_CLUSTER", f"{CONSTANTS}.ENABLE_RAY_CLUSTER"), bool):
        raise RAY.changed(f"{CONSTANTS}.ENABLE_RAY_CLUSTER", "is no longer a bool")
    if RAY.attr(constants, "ENABLE_RAY_CLUSTERS_ENV_VAR", f"{CONSTANTS}.ENABLE_RAY_CLUSTERS_ENV_VAR") != CLUSTERS_ENV:
        raise RAY.changed(f"{CONSTANTS}.ENABLE_RAY_CLUSTERS_ENV_VAR", f"is no longer {CLUSTERS_ENV}")
    RAY.uses(RAY.module_of("ray._private.services"), "get_node_ip_address",  # read at ray.init, not
             CONSTANTS, "ENABLE_RAY_CLUSTER")                                # copied at import
    if not local_cpus() > 0:
        raise RAY.changed("ray._private.utils.get_num_cpus()", "no longer counts this machine's CPUs")

    cause = ValueError("probe")
    wrapped = RAY.attr(RAY.module_of(USER_ERROR.rpartition(".")[0]), "UserExceptionWithTraceback", USER_ERROR)
    if worker_causes(_worker_group_error()("probe", {1: wrapped(cause, "Traceback ...")})) != {1: cause}:
        raise RAY.changed(f"{USER_ERROR}._base_exc", "no longer holds the worker's own exception")

    module = RAY.module_of(REPORT_LOGGER_MODULE)
    if RAY.attr(module, "logger", f"{REPORT_LOGGER_MODULE}.logger").name != report_logger_name():
        raise RAY.changed(f"{REPORT_LOGGER_MODULE}.logger", "is no longer named by its file's path")
    for name in STORAGE_LOGGERS:
        if RAY.attr(RAY.module_of(name), "logger", f"{name}.logger").name != name:
            raise RAY.changed(f"{name}.logger", "is no longer named by its module")
