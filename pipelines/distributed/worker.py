"""What runs inside each Ray Train worker: load the data, restore the last checkpoint
Ray Train hands back (after a worker-group restart), and call the one training loop,
gan.train.train, in the DDP process group Ray Train has already set up.

Rank 0 writes the MLflow run the driver owns (tracking.attached.AttachedRun); every rank
reports each checkpoint to Ray Train (a barrier), so a failed group restarts from the
newest one.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan.callbacks import SHIFT_KEY, ForwardingCallbacks, ShiftedSteps
from gan.checkpoint import checkpoint_name, load_checkpoint, save_checkpoint
from gan.config import make_config
from gan.data import load_dataset
from gan.train import train
from pipelines.tracking import names
from pipelines.tracking.attached import AttachedRun
from pipelines.tracking.callbacks import MlflowCallbacks
from pipelines.tracking.resources import log_queued, system_metrics
from pipelines.tracking.runs import RunHandle
from pipelines.training.prepare import build_evaluator

# In a Ray Train report: the workers stop here; their trial hands this epoch to Tune
# itself, with its checkpoint (sweep.member.PausingLoop), so Tune is not told twice.
PAUSED_KEY = "paused_here"


class RayTrainCallbacks(ForwardingCallbacks):
    """Per-step and eval numbers to MLflow (rank 0); checkpoints to Ray Train (all ranks).
    `pause_at`: epochs where the workers score, checkpoint and stop (a population member's
    perturbation epochs: each life of it is one Ray Train run)."""

    def __init__(self, rank: int, tracking: MlflowCallbacks | None = None, pause_at: tuple[int, ...] = ()) -> None:
        super().__init__(tracking)  # only rank 0 has one; the others forward to a no-op
        self.rank, self.tracking = rank, tracking
        self.pause_at = set(pause_at)
        self.last_eval: dict[str, float] = {}
        self.checkpointed = -1  # the epoch of the last checkpoint

    def wants_eval(self, epoch: int) -> bool:
        return epoch in self.pause_at or super().wants_eval(epoch)

    def wants_checkpoint(self, epoch: int) -> bool:
        return epoch in self.pause_at or super().wants_checkpoint(epoch)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        self.last_eval = {k: float(v) for k, v in metrics.items()}
        super().on_eval(epoch, step, grid, metrics)

    def stop_requested(self) -> str | None:
        """Rank 0 reads whether the run's owner asked the workers to stop (a sweep trial
        Tune stopped: sweep.trial.TuneStopWatch); the loop makes every rank agree."""
        if self.checkpointed in self.pause_at:
            return f"paused at epoch {self.checkpointed}"  # every rank asks: one agreement
        if self.tracking is None:
            return None
        reason = self.tracking.read_tag(names.STOP_REQUESTED)  # None while the server is away
        return reason or self.inner.stop_requested()

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        import ray.train

        self.checkpointed = epoch
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
            if epoch in self.pause_at:
                metrics[PAUSED_KEY] = 1
            ray.train.report(metrics, checkpoint=checkpoint)


class EpochLines(ForwardingCallbacks):
    """A line per epoch on the driver's console (Ray forwards what a worker prints), at its
    eval, grid or checkpoint: `epoch 3/20 (step 234), FID 81.20`. The console's tqdm bar
    cannot cross Ray's line-by-line forwarding. Rank 0 of `train --workers N`."""

    def __init__(self, inner: Any, epochs: int) -> None:
        super().__init__(inner)
        self.epochs, self.printed = epochs, 0

    def _line(self, epoch: int, step: int, fid: float | None = None) -> None:
        if epoch > self.printed:
            self.printed = epoch
            scored = f", FID {fid:.2f}" if fid is not None else ""
            print(f"epoch {epoch}/{self.epochs} (step {step}){scored}", file=sys.stderr, flush=True)

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        super().on_eval(epoch, step, grid, metrics)
        self._line(epoch, step, metrics.get("fid"))

    def on_grid(self, epoch: int, step: int, grid: np.ndarray) -> None:
        super().on_grid(epoch, step, grid)
        self._line(epoch, step)

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        self._line(epoch, step)  # before the report: Ray Train may end the group in it
        super().on_checkpoint(epoch, step, state)


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


def quiet_reports() -> None:
    """Ray 2.60 logs each report of each worker at INFO, with its whole metrics dict, from a
    logger named by its file's path (logging.getLogger(__file__)), which Ray Train's own
    log level (make_trainer) does not reach: one line per worker per epoch drowned the
    run's progress lines."""
    from pipelines.compat.ray_api import report_logger_name

    logging.getLogger(report_logger_name()).setLevel(logging.WARNING)


def train_worker(config: dict[str, Any]) -> None:
    """The TorchTrainer's per-worker function. `config`: cfg (a RunConfig dict), handle
    (the RunHandle of the run its driver owns), threads; warm (a fine-tune's start);
    resume (the training state a population member's life starts from) and pause_at."""
    import ray.train
    import ray.train.torch

    quiet_reports()
    cfg = make_config(config["cfg"])
    handle: RunHandle = config["handle"]
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(int(config["threads"]))
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # The prepared copy the driver resolved, if any (no worker prepares or lists a folder).
    # Streamed, this worker reads only its rank's slice of each batch from its shards.
    at = config.get("data_at")
    data = load_dataset(f"prepared:{at}" if at else cfg.dataset, cfg.data_dir, cfg.image_size, cfg.data_mode,
                        cfg.data_budget_mb)
    # A fine-tune (train --from --warm) and a member's life start from the state they were
    # given until the group has a checkpoint of its own: a restarted group resumes from that.
    own = restored_state()
    state = own or config.get("resume")
    warm = config.get("warm") if state is None else None
    shift = int((state or {}).get(SHIFT_KEY, 0))  # a member's: its run's steps go on from its own
    pause_at = tuple(config.get("pause_at", ()))
    evaluator = build_evaluator(cfg, data, device)
    if rank != 0:
        train(cfg, data, ShiftedSteps(RayTrainCallbacks(rank, pause_at=pause_at), shift), evaluator=evaluator,
              resume=state, device=device, progress=False, warm=warm)
        return
    # Rank 0 writes the run: restored like every mode's (a restarted group sends what its
    # last life kept offline first), as the driver's lease's holder.
    with AttachedRun(handle) as run:
        tracking = run.tracking(cfg, data.shape, dataclasses.replace(run.restore(), warm=warm))
        if own is not None:
            run.client.set_tag(run.run_id, names.RAY_RESTORED_FROM_STEP, str(own["step"]))
        log_queued(run.client, run.run_id)  # each group of the run: a restarted one waits again
        callbacks: ForwardingCallbacks = ShiftedSteps(RayTrainCallbacks(rank, tracking, pause_at), shift)
        if config.get("progress"):
            callbacks = EpochLines(callbacks, cfg.epochs)
        # rank 0's machine in the run's system metrics (the other ranks' nodes are not sampled)
        with system_metrics(run.run_id, handle.tracking_uri, resumed=True):
            result = train(cfg, data, callbacks, evaluator=evaluator, resume=state, device=device, progress=False,
                           warm=warm)
        run.settle(result.seconds)
        if result.diverged:  # every rank stopped at the same step; the driver fails the run
            run.mark_diverged(str(result.stopped))
