"""Data-parallel training: N workers take the same step as one, `gan-pipeline train
--workers 2` under real Ray Train into a real sqlite MLflow store, a worker killed and
restarted from its checkpoint, and the CUDA mixed-precision policy checked on CPU."""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import pytest
import torch
from conftest import sqlite_store, wait_for

from gan.callbacks import Callbacks
from gan.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from gan.config import ConfigError, make_config
from gan.precision import Precision, amp_dtype
from pipelines.tracking import names

pytestmark = pytest.mark.integration

TINY = ["--arch", "dcgan", "--dcgan-width", "8", "--batch-size", "64", "--eval-samples", "10",
        "--eval-budget", "0"]  # every epoch scored: the tests count evals
STEPS_PER_EPOCH = 5000 // 64
# No BatchNorm anywhere: a worker's step does not depend on how the batch is split.
NO_BN = [
    {"arch": "mlp", "mlp_width": 16, "g_norm": "none", "ema": 0.9},
    {"arch": "dcgan", "dcgan_width": 8, "g_norm": "none", "spectral_norm": True, "n_dis": 2},
]


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_g_norm_none_builds_a_generator_without_batchnorm(arch):
    from torch import nn

    from gan.models import build_models

    g, _ = build_models(make_config({"arch": arch, "g_norm": "none"}), (1, 28, 28))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.modules())
    assert g(torch.randn(3, 100)).shape == (3, 1, 28, 28)
    with pytest.raises(ConfigError, match="g_norm='layer' is invalid: must be one of batch, none"):
        make_config({"g_norm": "layer"})


def _tiny_data():
    from gan.data import ImageData, load_dataset

    data = load_dataset("mnist-5k")
    return ImageData("mnist-256", data.images[:256].clone(), None)


def _config(overrides: dict, batch: int = 64):
    return make_config({"epochs": 1, "batch_size": batch, "device": "cpu", "latent_dim": 16,
                        **overrides})


class _KeepState(Callbacks):
    """Keeps the last checkpoint state the loop hands over."""

    state = None

    def on_checkpoint(self, epoch, step, state) -> None:
        self.state = state


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from gan.distributed import wrap_ddp
    from gan.train import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = _tiny_data()
        states = []
        for overrides in NO_BN:
            keep = _KeepState()
            train(_config(overrides), data, keep, device=torch.device("cpu"))
            states.append(keep.state)
        if rank == 0:
            torch.save(states, out)
        # torch's SyncBatchNorm refuses CPU tensors: the loop says so in one line instead
        with pytest.raises(ConfigError, match="sync_bn=True is invalid on cpu"):
            wrap_ddp(nn.Sequential(nn.BatchNorm1d(4)), torch.device("cpu"), sync_bn=True)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_workers_take_the_same_steps_as_one_worker_at_the_same_global_batch(tmp_path):
    import torch.multiprocessing as mp

    from gan.train import train

    out = str(tmp_path / "two.pt")
    mp.spawn(_ddp_rank, args=(2, _free_port(), out), nprocs=2)
    two = torch.load(out, weights_only=True)

    data = _tiny_data()
    for overrides, state2 in zip(NO_BN, two, strict=True):
        keep = _KeepState()
        train(_config(overrides), data, keep, device=torch.device("cpu"))
        one = keep.state
        assert one["step"] == state2["step"] == 256 // 64 // overrides.get("n_dis", 1)
        for net in ("G", "D", "G_ema"):
            assert one[net].keys() == state2[net].keys()
            for name in one[net]:
                torch.testing.assert_close(state2[net][name], one[net][name], rtol=1e-5, atol=1e-6,
                                           msg=f"{overrides['arch']} {net}.{name}")
        # Adam's moments too, so the steps after these would match as well
        for opt in ("opt_g", "opt_d"):
            torch.testing.assert_close(state2[opt]["state"][0]["exp_avg_sq"],
                                       one[opt]["state"][0]["exp_avg_sq"], rtol=1e-4, atol=1e-12)


def test_sync_bn_on_cpu_workers_is_a_one_line_error_before_any_run(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert main(["train", "--workers", "2", "--sync-bn", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sync_bn=True is invalid on cpu" in err
    assert not (tmp_path / "mlflow.db").exists()  # no run was created


def test_one_worker_with_gpu_is_an_in_process_cuda_run_without_ray(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: this checks the CPU-only answer")
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert main(["train", "--workers", "1", "--gpu", *TINY]) == 2
    assert "device='cuda' is invalid here: no CUDA GPU is visible" in capsys.readouterr().err


def test_a_worker_user_error_surfaces_as_itself_and_a_dead_worker_as_one_line():
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from gan.data import DataError
    from pipelines.distributed.trainer import _worker_causes, _worker_summary

    missing = DataError("dataset folder '/data/x' does not exist or is not a folder")
    error = WorkerGroupError("...", {1: UserExceptionWithTraceback(missing, "Traceback ...")})
    assert _worker_causes(error) == {1: missing}

    died = RuntimeError("The actor is dead because its worker process has died. " + "x" * 300)
    error = WorkerGroupError("...", {1: died})
    assert _worker_summary(error, _worker_causes(error)) == (
        "rank 1: RuntimeError: The actor is dead because its worker process has died.")


# --------------------------------------------------------------------------- real Ray


@pytest.fixture
def ray_session(local_ray):
    """The session's Ray (conftest.local_ray): run_distributed uses a running session.
    Yields the folder where a test arms a fault its workers fire (tests/faults)."""
    return local_ray


def _store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = sqlite_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri)


def _only_run(client, experiment: str):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def test_two_worker_run_logs_one_mlflow_run_whose_checkpoint_resumes_in_process(
        ray_session, tmp_path, monkeypatch, mnist5k, capfd):
    from gan.train import train
    from pipelines.cli import main
    from pipelines.tracking.history import latest_checkpoint

    client = _store(tmp_path, monkeypatch)
    rc = main(["train", "--workers", "2", "--epochs", "1", "--experiment", "ray2",
               "--ray-storage", str(tmp_path / "ray"), *TINY])
    assert rc == 0
    # The console: rank 0's line per epoch (Ray forwards the workers' output a moment
    # later), not Ray Train's INFO dump of each worker's every report and checkpoint.
    console = []
    wait_for(lambda: console.append(capfd.readouterr().err) or "epoch 1/1 (step 78), FID" in "".join(console),
             timeout=30)
    time.sleep(2)  # rank 0 reported after that line: time to forward it too
    console.append(capfd.readouterr().err)
    assert "Reporting training result" not in "".join(console) and "Checkpoint successfully" not in "".join(console)

    run = _only_run(client, "ray2")
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["backend"] == "gloo"
    assert run.data.params["cpus_per_worker"] == "1" and run.data.params["device"] == "cpu"
    assert 0 <= run.data.metrics[names.QUEUED_S] < 60  # its group's wait for CPUs: none to wait for here
    steps = [m.step for m in client.get_metric_history(rid, "d_loss")]
    assert steps == list(range(1, STEPS_PER_EPOCH + 1))
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", "progress.gif", "checkpoints", "images"} <= top
    from pipelines.tracking.models import model_roles

    assert model_roles(client, rid) == {"best", "final"}  # logged by rank 0 at its eval
    # Scored is shipped on 2 workers too: each rank scored its half of the samples with rank
    # 0's generator, BatchNorm statistics included (per-worker BatchNorm: the ranks' own
    # differ), so re-scoring the shipped model in one process gives the logged value.
    from pipelines.registry.evaluate import EvalRequest, evaluate
    from pipelines.tracking.models import FINAL, model_with_role

    final = model_with_role(client, rid, FINAL)
    again = evaluate(client, EvalRequest(f"models:/{final.model_id}", None, None, None, None, None, None))
    assert again.logged and again.scores["fid"] == pytest.approx(again.logged["fid"], rel=1e-6)
    # the copy check too: on the gathered features, and its panel drawn by rank 0 alone
    assert again.scores["copy_share"] == again.logged["copy_share"]
    assert final.tags["gan.copy_panel"] in {a.path for a in client.list_artifacts(rid, "copy_check")}

    # the distributed checkpoint continues in-process (world size 1) where it stopped
    state = latest_checkpoint(client, rid, tmp_path / "dl")
    assert state["epoch"] == 1 and state["step"] == STEPS_PER_EPOCH
    cfg = dataclasses.replace(make_config(state["config"]), epochs=2)
    result = train(cfg, mnist5k, resume=state, device=torch.device("cpu"))
    assert result.epochs_done == 2 and result.step == 2 * STEPS_PER_EPOCH


@pytest.mark.slow  # the same guarantee as tests/test_lifecycle.py's diverged[ray-train] cell (slow too)
def test_a_diverged_ray_train_run_fails_with_the_guards_reason(ray_session, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    client = _store(tmp_path, monkeypatch)
    rc = main(["train", "--workers", "2", "--epochs", "1", "--lr-g", "1e300", "--experiment", "nan2",
               "--ray-storage", str(tmp_path / "ray"), *TINY])
    assert rc == 1 and "health: " in capsys.readouterr().err
    run = _only_run(client, "nan2")
    assert run.info.status == "FAILED" and run.data.tags["stopped_reason"].startswith("health: ")
    assert "fid" not in run.data.metrics


@pytest.mark.slow  # a worker group restarted by Ray Train takes minutes on 2 cores
def test_a_worker_killed_after_the_first_checkpoint_restarts_and_logs_every_step_once(
        ray_session, tmp_path, monkeypatch):
    from pipelines.cli import main

    client = _store(tmp_path, monkeypatch)
    from conftest import arm_fault

    arm_fault(ray_session, "fail_once")
    rc = main(["train", "--workers", "2", "--epochs", "2", "--max-failures", "1",
               "--experiment", "fault", "--ray-storage", str(tmp_path / "ray"), *TINY])
    assert rc == 0
    assert not (ray_session / "fail_once").exists()  # rank 1 really died once (the fault fired)

    run = _only_run(client, "fault")
    assert run.info.status == "FINISHED"
    # the restarted group resumed from the epoch-1 checkpoint, not from scratch
    assert run.data.tags["ray.restored_from_step"] == str(STEPS_PER_EPOCH)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # no gap, no duplicate


# --------------------------------------------------------------------------- CUDA AMP on CPU


def test_amp_dtype_is_bf16_where_supported_else_fp16_and_none_on_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype(cuda, True, bf16_supported=True) is torch.bfloat16
    assert amp_dtype(cuda, True, bf16_supported=False) is torch.float16
    assert amp_dtype(cuda, False, bf16_supported=True) is None
    assert amp_dtype(cpu, True, bf16_supported=True) is None


def test_fp16_grad_scaler_state_survives_a_weights_only_checkpoint(tmp_path):
    # fp16 is what gets scalers; CPU GradScaler runs the same state machine as CUDA's
    prec = Precision(torch.device("cpu"), torch.float16)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    for value in (1.0, float("inf"), 1.0):  # a finite step, an overflow (scale halves), a step
        opt.zero_grad()
        prec.scaler_d.scale((w * value).sum()).backward()
        prec.scaler_d.step(opt)
        prec.scaler_d.update()
    saved = prec.state_dict()
    assert saved["d"]["scale"] == 2.0**15  # 65536 halved once by the overflow

    path = save_checkpoint({"format": FORMAT_VERSION, "scalers": saved}, tmp_path / "c.pt")
    restored = Precision(torch.device("cpu"), torch.float16)
    restored.load_state_dict(load_checkpoint(path)["scalers"])  # weights_only=True inside
    assert restored.state_dict() == saved
    assert restored.scaler_d.get_scale() == 2.0**15


def test_a_local_store_is_refused_on_a_multi_node_cluster():
    from pipelines.distributed.connect import check_store_for_cluster
    from pipelines.errors import TrackingError

    check_store_for_cluster("sqlite:///mlflow.db", alive_nodes=1)  # one machine: fine
    check_store_for_cluster("http://10.0.0.5:5000", alive_nodes=8)  # a server: fine
    for uri in ("sqlite:///mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"):
        with pytest.raises(TrackingError, match="set MLFLOW_TRACKING_URI to a tracking server"):
            check_store_for_cluster(uri, alive_nodes=3)
