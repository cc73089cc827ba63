"""What runs inside each Ray Train worker: load the data, restore the last checkpoint
Ray Train hands back (after a worker-group restart), and call the one training loop,
gan.train.train, in the DDP process group Ray Train has already set up.

Rank 0 writes the MLflow run the driver created; every rank reports each checkpoint to
Ray Train (a barrier), so a failed group restarts from the newest one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan.callbacks import ForwardingCallbacks
from gan.checkpoint import checkpoint_name, load_checkpoint, save_checkpoint
from gan.config import make_config
from gan.data import load_dataset
from gan.train import train
from pipelines.tracking import names
from pipelines.tracking.callbacks import MlflowCallbacks
from pipelines.tracking.history import last_eval_step, last_logged_step
from pipelines.tracking.resources import system_metrics
from pipelines.tracking.store import client_for
from pipelines.training.prepare import build_evaluator

# Test hook: GAN_PIPELINES_FAIL_ONCE=/path/marker makes rank 1 die once, right after
# the first checkpoint, unless the marker exists (it creates it first). The driver reads
# the variable and forwards it, since a cluster's workers do not see its environment.
FAIL_ONCE_ENV = "GAN_PIPELINES_FAIL_ONCE"
# Ray Train registers a checkpoint only once it has polled every rank's report (every
# 2 s); a rank that dies before that poll takes the report with it. Wait past two polls.
_FAIL_AFTER_S = 5.0


class RayTrainCallbacks(ForwardingCallbacks):
    """Per-step and eval numbers to MLflow (rank 0); checkpoints to Ray Train (all ranks)."""

    def __init__(self, rank: int, tracking: MlflowCallbacks | None = None,
                 fail_once: str | None = None) -> None:
        super().__init__(tracking)  # only rank 0 has one; the others forward to a no-op
        self.rank, self.tracking, self.fail_once = rank, tracking, fail_once
        self.last_eval: dict[str, float] = {}

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.last_eval = {k: float(v) for k, v in metrics.items()}
        super().on_eval(epoch, step, grid, metrics)

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        import ray.train

        # Every rank must call report (it is a barrier); only rank 0 has a file to give.
        with tempfile.TemporaryDirectory(prefix="gan-ray-ckpt-") as folder:
            checkpoint = None
            if self.rank == 0:
                path = save_checkpoint(state, Path(folder) / checkpoint_name(epoch))
                if self.tracking:  # the same file in the MLflow run: `--resume` works too
                    self.tracking.log_checkpoint(path, step)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            # SYNC upload (the default): the folder is copied to storage before report returns.
            metrics = {"epoch": epoch, "step": step, **self.last_eval}
            ray.train.report(metrics, checkpoint=checkpoint)
        self._maybe_fail()

    def _maybe_fail(self) -> None:
        if not self.fail_once or self.rank != 1:
            return
        try:  # O_EXCL: exactly one process, in exactly one attempt, gets to fail
            os.close(os.open(self.fail_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        time.sleep(_FAIL_AFTER_S)
        os._exit(1)


def checkpoint_file(folder: str | Path) -> Path:
    """The checkpoint file inside a reported Ray Train checkpoint folder."""
    files = sorted(Path(folder).glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"no *.pt checkpoint file in {folder}")
    return files[-1]


def restored_state() -> dict[str, Any] | None:
    """The newest checkpoint Ray Train reported (after a restart), or None on a first start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_checkpoint(checkpoint_file(folder))


def train_worker(config: dict[str, Any]) -> None:
    """The TorchTrainer's per-worker function. `config`: cfg (a RunConfig dict),
    tracking_uri, run_id, threads, fail_once."""
    import ray.train
    import ray.train.torch

    cfg = make_config(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(int(config["threads"]))
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
    state = restored_state()

    tracking = None
    if rank == 0:
        client, run_id = client_for(config["tracking_uri"]), config["run_id"]
        # Steps this run already holds (logged before a failure) are not written again.
        tracking = MlflowCallbacks(client, run_id, floor=last_logged_step(client, run_id),
                                   eval_floor=last_eval_step(client, run_id), cfg=cfg, image_shape=data.shape)
        if state is not None:
            client.set_tag(run_id, names.RAY_RESTORED_FROM_STEP, str(state["step"]))
    callbacks = RayTrainCallbacks(rank, tracking, config.get("fail_once"))
    # rank 0's machine in the run's system metrics (the other ranks' nodes are not sampled)
    usage = system_metrics(config["run_id"], config["tracking_uri"], resumed=True) if rank == 0 \
        else contextlib.nullcontext()
    try:
        with usage:
            result = train(cfg, data, callbacks, evaluator=build_evaluator(cfg, data, device),
                           resume=state, device=device, progress=False)
        if tracking:  # all sent, or (server away) a bounded wait, then TrackingLost
            tracking.settle()
        if result.diverged and tracking:  # every rank stopped at the same step; the driver fails the run
            tracking.client.set_tag(tracking.run_id, names.STOPPED_REASON, result.stopped)
    finally:
        if tracking:
            with contextlib.suppress(Exception):  # never mask the loop's own error
                tracking.flush()
