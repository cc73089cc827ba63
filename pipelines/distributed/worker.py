"""What runs inside each Ray Train worker: load the data, restore the last checkpoint
Ray Train hands back (after a worker-group restart), and call the one training loop,
gan.train.train, in the DDP process group Ray Train has already set up.

Rank 0 writes the MLflow run the driver owns (tracking.attached.AttachedRun); every rank
reports each checkpoint to Ray Train (a barrier), so a failed group restarts from the
newest one.
"""

from __future__ import annotations

import dataclasses
import tempfile
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
from pipelines.tracking.attached import AttachedRun
from pipelines.tracking.callbacks import MlflowCallbacks
from pipelines.tracking.resources import system_metrics
from pipelines.tracking.runs import RunHandle
from pipelines.training.prepare import build_evaluator


class RayTrainCallbacks(ForwardingCallbacks):
    """Per-step and eval numbers to MLflow (rank 0); checkpoints to Ray Train (all ranks)."""

    def __init__(self, rank: int, tracking: MlflowCallbacks | None = None) -> None:
        super().__init__(tracking)  # only rank 0 has one; the others forward to a no-op
        self.rank, self.tracking = rank, tracking
        self.last_eval: dict[str, float] = {}

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.last_eval = {k: float(v) for k, v in metrics.items()}
        super().on_eval(epoch, step, grid, metrics)

    def stop_requested(self) -> str | None:
        """Rank 0 reads whether the run's owner asked the workers to stop (a sweep trial
        Tune stopped: sweep.trial.TuneStopWatch); the loop makes every rank agree."""
        if self.tracking is None:
            return None
        reason = self.tracking.client.get_run(self.tracking.run_id).data.tags.get(names.STOP_REQUESTED)
        return reason or self.inner.stop_requested()

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
    """The TorchTrainer's per-worker function. `config`: cfg (a RunConfig dict), handle
    (the RunHandle of the run its driver owns), threads."""
    import ray.train
    import ray.train.torch

    cfg = make_config(config["cfg"])
    handle: RunHandle = config["handle"]
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(int(config["threads"]))
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
    state = restored_state()
    # A fine-tune (train --from --warm) starts from its source's checkpoint until the group
    # has one of its own: a restarted group resumes from that instead.
    warm = config.get("warm") if state is None else None
    evaluator = build_evaluator(cfg, data, device)
    if rank != 0:
        train(cfg, data, RayTrainCallbacks(rank), evaluator=evaluator, resume=state, device=device, progress=False,
              warm=warm)
        return
    # Rank 0 writes the run: restored like every mode's (a restarted group sends what its
    # last life kept offline first), as the driver's lease's holder.
    with AttachedRun(handle) as run:
        tracking = run.tracking(cfg, data.shape, dataclasses.replace(run.restore(), warm=warm))
        if state is not None:
            run.client.set_tag(run.run_id, names.RAY_RESTORED_FROM_STEP, str(state["step"]))
        # rank 0's machine in the run's system metrics (the other ranks' nodes are not sampled)
        with system_metrics(run.run_id, handle.tracking_uri, resumed=True):
            result = train(cfg, data, RayTrainCallbacks(rank, tracking), evaluator=evaluator, resume=state,
                           device=device, progress=False, warm=warm)
        run.settle(result.seconds)
        if result.diverged:  # every rank stopped at the same step; the driver fails the run
            run.mark_diverged(str(result.stopped))
