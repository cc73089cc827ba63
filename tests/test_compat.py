"""The private APIs of Ray, MLflow and torch that the code reads (pipelines/compat,
gan/torch_api.py): each check() passes on the installed versions, and with any one of the
internals taken away it fails naming that internal and the version, as the wrapper the
call site uses does: never a silent success. No Ray cluster starts here."""

from __future__ import annotations

import logging
import re
import threading
from importlib import import_module, metadata
from types import SimpleNamespace

import pytest
import torch

from gan import torch_api
from pipelines.compat import mlflow_api, ray_api
from pipelines.compat.changed import InternalsChanged


def fails(api: str, library: str):
    """pytest.raises for a compat error naming `api` and the installed `library` version."""
    version = metadata.version(library).split("+")[0]
    error = torch_api.TorchInternalsChanged if library == "torch" else InternalsChanged
    return pytest.raises(error, match=rf"{re.escape(api)}.* in {library} {re.escape(version)}")


def assigning(*fields: str):
    """A method that sets exactly `fields` on its instance (what a changed one would set)."""
    body = "".join(f"    self.{f} = None\n" for f in fields) or "    pass\n"
    namespace: dict = {}
    exec(f"def method(self, *args, **kwargs):\n{body}", namespace)
    return namespace["method"]


def test_the_installed_versions_pass_every_check():
    torch_api.check()
    mlflow_api.check()
    ray_api.check()


# --------------------------------------------------------------------------- torch


def test_a_missing_foreach_lerp_fails_the_check_and_the_ema_update(monkeypatch):
    from torch import nn

    from gan.ema import ema_update

    monkeypatch.delattr(torch, "_foreach_lerp_")
    with fails("torch._foreach_lerp_", "torch"):
        torch_api.check()
    with fails("torch._foreach_lerp_", "torch"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), 0.5)


def test_a_foreach_lerp_that_does_nothing_fails_the_check(monkeypatch):
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda ends, targets, weight: None)
    with fails("torch._foreach_lerp_", "torch"):
        torch_api.check()


# --------------------------------------------------------------------------- MLflow

MONITOR_MODULE = "mlflow.system_metrics.system_metrics_monitor"


def test_a_missing_dataset_entity_fails_the_check_and_the_dataset_input(monkeypatch):
    from mlflow.data.dataset import Dataset

    monkeypatch.delattr(Dataset, "_to_mlflow_entity")
    with fails("Dataset._to_mlflow_entity", "mlflow"):
        mlflow_api.check()
    with fails("Dataset._to_mlflow_entity", "mlflow"):
        mlflow_api.dataset_entity(SimpleNamespace())


def test_a_dataset_entity_of_another_type_fails_the_check(monkeypatch):
    from mlflow.data.dataset import Dataset

    monkeypatch.setattr(Dataset, "_to_mlflow_entity", lambda self: {"name": self.name})
    with fails("Dataset._to_mlflow_entity", "mlflow"):
        mlflow_api.check()


@pytest.mark.parametrize("method, name", [("__init__", "_process"), ("__init__", "sampling_interval"),
                                          ("__init__", "mlflow_logger"), ("start", "_process"),
                                          ("finish", "_process"), ("monitor", "sampling_interval")])
def test_a_system_metrics_monitor_without_what_resources_reads_fails_the_check(monkeypatch, method, name):
    monitor = import_module(MONITOR_MODULE).SystemMetricsMonitor
    others = {"_process", "sampling_interval", "mlflow_logger"} - {name} if method == "__init__" else set()
    monkeypatch.setattr(monitor, method, assigning(*sorted(others)))
    with fails(f"SystemMetricsMonitor.{name}", "mlflow"):
        mlflow_api.check()


def test_a_monitor_without_its_thread_attribute_is_not_taken_for_one_never_started():
    with fails("SystemMetricsMonitor._process", "mlflow"):
        mlflow_api.monitor_started(SimpleNamespace())
    assert mlflow_api.monitor_started(SimpleNamespace(_process=None)) is False


def test_log_image_naming_its_files_otherwise_fails_the_check(monkeypatch):
    from mlflow import MlflowClient

    def log_image(self, run_id, image, key=None, step=None, timestamp=None, synchronous=None):
        self.log_artifact(run_id, f"/tmp/{key.replace('/', '~')}-{step}-{timestamp}.png", "images")

    monkeypatch.setattr(MlflowClient, "log_image", log_image)
    with fails("MlflowClient.log_image's file names", "mlflow"):
        mlflow_api.check()


def test_the_grid_pattern_reads_both_separators_and_the_step():
    pattern = mlflow_api.image_file_pattern("samples")
    for name in ("samples+step+12+timestamp+1+ab-cd.png", "samples%step%12%timestamp%1%ab-cd.png"):
        m = pattern.match(name)
        assert m and m.group(1) == "12"
    assert not pattern.match("samples+step+12+timestamp+1+ab-cd+compressed.webp")


@pytest.mark.parametrize("tag", [mlflow_api.SHARED_VIEW_PREFIX, mlflow_api.EXPERIMENT_KIND,
                                 mlflow_api.MODEL_DEVELOPMENT])
def test_a_ui_bundle_that_no_longer_reads_a_tag_fails_the_check(monkeypatch, tmp_path, tag):
    import mlflow

    bundle = tmp_path / "mlflow" / "server" / "js" / "build" / "static" / "js"
    bundle.mkdir(parents=True)
    kept = [t for t in (mlflow_api.SHARED_VIEW_PREFIX, mlflow_api.EXPERIMENT_KIND, mlflow_api.MODEL_DEVELOPMENT)
            if t != tag]
    (bundle / "main.js").write_text(" ".join(f'"{t}"' for t in kept))
    monkeypatch.setattr(mlflow, "__file__", str(tmp_path / "mlflow" / "__init__.py"))
    with fails(f"experiment tag {tag!r}", "mlflow"):
        mlflow_api.check()


# --------------------------------------------------------------------------- Ray

SESSION = "ray.train._internal.session"


def test_outside_a_trial_the_stop_watch_fails_instead_of_calling_every_crash_a_prune():
    from pipelines.sweep.tune_stop import TuneStopWatch

    with fails(f"{SESSION}.get_session() returned None", "ray"):
        TuneStopWatch(None, "0" * 32, lambda: "pruned")


def test_a_missing_get_session_fails_the_check_and_the_watch(monkeypatch):
    monkeypatch.delattr(import_module(SESSION), "get_session")
    with fails(f"{SESSION}.get_session", "ray"):
        ray_api.check()
    with fails(f"{SESSION}.get_session", "ray"):
        ray_api.trial_session()


@pytest.mark.parametrize("name", ["stop_event", "_inter_actor_queue"])
def test_a_session_without_what_the_watch_reads_fails_the_check_and_the_watch(monkeypatch, name):
    session_class = import_module(SESSION)._TrainSession
    monkeypatch.setattr(session_class, "reset", assigning(*({"stop_event", "_inter_actor_queue"} - {name})))
    with fails(f"_TrainSession.{name}", "ray"):
        ray_api.check()
    fields = {"stop_event": threading.Event(), "_inter_actor_queue": None}
    del fields[name]
    monkeypatch.setattr(import_module(SESSION), "get_session", lambda: SimpleNamespace(**fields))
    with fails(f"_TrainSession.{name}", "ray"):
        ray_api.trial_session()


def test_the_watch_hears_tunes_stop_and_its_shutdown_of_the_session(monkeypatch):
    from pipelines.sweep.tune_stop import TuneStopWatch

    session = SimpleNamespace(stop_event=threading.Event(), _inter_actor_queue=None)
    monkeypatch.setattr(import_module(SESSION), "get_session", lambda: session)
    watch = TuneStopWatch(None, "0" * 32, lambda: "pruned")
    assert not watch.tune_stopped() and ray_api.report_queue(session) is None
    session.stop_event.set()
    assert watch.tune_stopped()
    session.stop_event.clear()
    monkeypatch.setattr(import_module(SESSION), "get_session", lambda: None)  # Tune's cleanup shut it down
    assert watch.tune_stopped()


class Trial:
    experiment_tag = "0"


def _pbt():
    from ray.tune.schedulers import PopulationBasedTraining

    return PopulationBasedTraining(time_attr="epoch", metric="fid", mode="min", perturbation_interval=2,
                                   hyperparam_mutations={"x": [1, 2]}, synch=True)


def test_pbt_resync_seeds_a_members_record_and_holds_the_next_round():
    from ray.tune.schedulers.pbt import _PBTTrialState

    pbt, trial = _pbt(), Trial()
    pbt._trial_state[trial] = _PBTTrialState(trial)
    ray_api.pbt_resync(pbt, trial, 4, 30.0, {"fid": 30.0})
    state = pbt._trial_state[trial]
    assert (state.last_train_time, state.last_perturbation_time, state.last_score) == (4, 4, -30.0)
    assert pbt._next_perturbation_sync == 4
    ray_api.pbt_next_round(pbt, [trial])
    assert pbt._next_perturbation_sync == 6


def test_an_exploits_checkpoint_goes_into_the_state_tune_saves(tmp_path):
    """PBT hands a member the donor's checkpoint on its checkpoint manager, which Tune's
    saved run metadata does not see (its JSON is cached): pbt_exploit_saved makes the next
    save carry it, so a driver killed mid-round resumes the member from what it copied."""
    from ray.train import Checkpoint
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = _CheckpointManager(checkpoint_config=None)
    own = metadata.get_json_state()
    donor = Checkpoint.from_directory(str(tmp_path))
    metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(donor, {"fid": 30.0})  # as _exploit does
    assert metadata.get_json_state() == own  # Ray would save the member's own checkpoint
    ray_api.pbt_exploit_saved(SimpleNamespace(run_metadata=metadata))
    restored = _TrainingRunMetadata.from_json_state(metadata.get_json_state())
    assert restored.checkpoint_manager.latest_checkpoint_result.checkpoint.path == donor.path


@pytest.mark.parametrize("name", ["_trial_state", "_metric_op", "_perturbation_interval", "_next_perturbation_sync"])
def test_a_pbt_without_what_resume_resyncs_fails_the_check_and_the_resync(monkeypatch, name):
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pbt import _PBTTrialState

    pbt, trial = _pbt(), Trial()
    pbt._trial_state[trial] = _PBTTrialState(trial)
    init = PopulationBasedTraining.__init__

    def without(self, *args, **kwargs):
        init(self, *args, **kwargs)
        delattr(self, name)

    monkeypatch.setattr(PopulationBasedTraining, "__init__", without)
    with fails(f"PopulationBasedTraining.{name}", "ray"):
        ray_api.check()
    delattr(pbt, name)
    with fails(f"PopulationBasedTraining.{name}", "ray"):
        ray_api.pbt_resync(pbt, trial, 4, 30.0, {"fid": 30.0})
        ray_api.pbt_next_round(pbt, [trial])


@pytest.mark.parametrize("name", ray_api.PBT_STATE_FIELDS)
def test_a_pbt_member_record_without_a_field_fails_the_check_and_the_resync(monkeypatch, name):
    from ray.tune.schedulers.pbt import _PBTTrialState

    monkeypatch.setattr(_PBTTrialState, "__init__", assigning(*(f for f in ray_api.PBT_STATE_FIELDS if f != name)))
    with fails(f"_PBTTrialState.{name}", "ray"):
        ray_api.check()
    pbt, trial = _pbt(), Trial()
    pbt._trial_state[trial] = _PBTTrialState(trial)
    with fails(f"_PBTTrialState.{name}", "ray"):
        ray_api.pbt_resync(pbt, trial, 4, 30.0, {"fid": 30.0})


def test_wrap_function_ignoring_mixins_fails_the_check_and_the_trainable(monkeypatch):
    function_trainable = import_module("ray.tune.trainable.function_trainable")
    monkeypatch.setattr(function_trainable, "wrap_function", lambda fn, name=None: type("T", (object,), {}))
    with fails("wrap_function's __mixins__", "ray"):
        ray_api.check()

    def trainable(config):
        pass

    with fails("wrap_function's __mixins__", "ray"):
        ray_api.with_mixins(trainable, Trial)


@pytest.mark.parametrize("module, name, value, api", [
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER", None, "ray._private.ray_constants.ENABLE_RAY_CLUSTER"),
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER", "yes", "ray._private.ray_constants.ENABLE_RAY_CLUSTER"),
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTERS_ENV_VAR", "X", "ENABLE_RAY_CLUSTERS_ENV_VAR"),
    ("ray._private.services", "get_node_ip_address", lambda address=None: "127.0.0.1", "ENABLE_RAY_CLUSTER"),
    ("ray._private.utils", "get_num_cpus", None, "ray._private.utils.get_num_cpus"),
    ("ray.train", "WorkerGroupError", None, "ray.train.WorkerGroupError"),
    ("ray.train.v2._internal.execution.context", "logger", logging.getLogger("ray.train"), "context.logger"),
    ("ray.train._internal.storage", "logger", logging.getLogger("ray.train"), "storage.logger"),
])
def test_a_missing_or_changed_ray_internal_fails_the_check(monkeypatch, module, name, value, api):
    if value is None:
        monkeypatch.delattr(import_module(module), name)
    else:
        monkeypatch.setattr(import_module(module), name, value)
    with fails(api, "ray"):
        ray_api.check()


def test_the_local_node_switches_fail_when_ray_no_longer_has_them(monkeypatch):
    monkeypatch.delattr(import_module("ray._private.ray_constants"), "ENABLE_RAY_CLUSTER")
    monkeypatch.delattr(import_module("ray._private.utils"), "get_num_cpus")
    with fails("ENABLE_RAY_CLUSTER", "ray"), ray_api.loopback_only():
        pass
    with fails("get_num_cpus", "ray"):
        ray_api.local_cpus()


def test_a_worker_error_wrapper_without_its_exception_fails_the_check_and_the_causes(monkeypatch):
    from ray.train import WorkerGroupError

    exceptions = import_module("ray.train.v2._internal.exceptions")

    class Renamed(exceptions.RayTrainError):
        def __init__(self, exc, traceback_str):
            self._exc = exc

    monkeypatch.setattr(exceptions, "UserExceptionWithTraceback", Renamed)
    with fails("UserExceptionWithTraceback._base_exc", "ray"):
        ray_api.check()
    with fails("UserExceptionWithTraceback._base_exc", "ray"):
        ray_api.worker_causes(WorkerGroupError("...", {0: Renamed(ValueError("x"), "Traceback ...")}))
    assert ray_api.worker_causes(RuntimeError("a controller's")) == {}
