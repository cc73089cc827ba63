"""Writing one run's story while it trains: the loop's callbacks (batched per-step
metrics, sample grids with their step, eval scores linked to the generator that earned
them, checkpoints under a retention policy). Only rank 0 writes.

The clock: MLflow steps are optimizer steps (one sequence per run: resume and dedup rely
on it), and every logged row also carries `kimg` (thousands of real images D has seen),
so a chart with kimg as its x-axis lines up trials of different batch sizes. Grids (one
every eval_every epoch, whether the eval budget let it score or not) are upscaled to
>= 512 px and kept twice: by step for the run page's image slider, and as
grids/epoch_NNN.png, a name every run of a sweep shares (an epoch is one pass over the
same data), so the compare page shows two runs' samples side by side. Each new best
generator's copy check (its samples above their nearest training images) is kept as
copy_check/epoch_NNN.png, named on the model by its gan.copy_panel tag.

The server may go away mid-run: every write is an event that is sent, or, while the
server does not answer, kept in the run's outbox on local disk (tracking.outbox) while
training goes on. The server is looked for again with backoff; once back, the kept
events are sent in order, each once. `settle` at the end waits a bounded time for it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gan.callbacks import Callbacks
from gan.checkpoint import checkpoint_name, save_checkpoint
from gan.config import RunConfig, make_config
from gan.sampling import fixed_latents, generate, image_grid
from pipelines.errors import TrackingLost
from pipelines.tracking import names
from pipelines.tracking.delivery import Delivery
from pipelines.tracking.history import Restored
from pipelines.tracking.models import BEST, FINAL, drop_role, log_model, model_with_role
from pipelines.tracking.outbox import Outbox
from pipelines.tracking.pictures import upscale
from pipelines.tracking.retention import prune_checkpoints

# MLflow caps a log_batch at 1000 metrics.
_BATCH = 900


class MlflowCallbacks(Delivery, Callbacks):
    """Writes the loop's numbers into one MLflow run (rank 0 only).

    `floor` is the last step the run already holds (after a resume): anything at or
    below it was logged before the kill and is not written again, so the run's step
    sequence has no duplicates. With `cfg` and `image_shape` it also keeps the run's best
    and final generators as LoggedModels (tracking.models), each eval's metrics carrying
    the model_id of the generator that earned them, and prunes old checkpoints to
    cfg.keep_checkpoints plus the best eval's.

    `owner` is the lease holder (tracking.lease) to compare against after an outage, when
    the callbacks are built before the lease is taken; `lease` (a Lease or LeaseWatch)
    stops every write with TrackingLost once another process took the run over. `warm`:
    the checkpoint a fine-tune starts from, whose generator draws the step-0 grid.
    """

    def __init__(self, client: Any, run_id: str, rank: int = 0, floor: int = 0,
                 frames: list[tuple[int, np.ndarray]] | None = None, cfg: RunConfig | None = None,
                 image_shape: tuple[int, ...] | None = None, eval_floor: int | None = None, *,
                 owner: str | None = None, lease: Any = None, warm: dict[str, Any] | None = None) -> None:
        self.client, self.run_id, self.rank, self.floor = client, run_id, rank, floor
        self.warm = warm
        self.lease = lease
        # evals resume from their own floor: one a kill interrupted (losses logged, eval not) is redone
        self.eval_floor = floor if eval_floor is None else eval_floor
        self.frames: list[tuple[int, np.ndarray]] = list(frames or [])
        self.cfg, self.image_shape = cfg, image_shape
        self.model_at: tuple[int, str] | None = None  # (step, model_id) of the last model logged
        self.started = floor > 0  # a fresh run logs its untrained generator's grid at step 0
        self.best_epoch: int | None = None
        self.step = floor
        self.seconds: dict[str, Any] = {}  # the loop's train_s/eval_s as of its last eval
        self._init_delivery(owner)
        if floor and cfg is not None and rank == 0:  # a resumed run: its best so far
            best = model_with_role(client, run_id, BEST)
            self.best_epoch = int(best.tags.get(names.MODEL_EPOCH, 0)) if best else None

    # ---- the loop's callbacks: each write is one event
    def on_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        rows = [(s, r) for s, r in rows if s > self.floor]
        if self.rank != 0 or not rows:
            return
        self._check_lease()
        self.step = rows[-1][0]
        if not self.started:
            self.started = True
            self._log_untrained()
        self._confirm()
        # Each write keeps the time it happened: one sent late (after an outage) still sits
        # in time order, which is the order MLflow returns a metric's history in.
        ts = _now_ms()
        event = {"kind": "metrics", "rows": rows, "ts": ts}
        if self.outage.active:
            self._deliver(event)
        else:  # the usual path: sent by this run's sender thread, confirmed at a later callback
            self.in_flight.append((event, self.sender.submit(self._send_metrics, rows, ts)))

    def on_seconds(self, seconds: dict[str, Any]) -> None:
        self.seconds = dict(seconds)  # logged at the close (TrackedRun): a pruned run's too

    def on_scored(self, epoch: int, step: int, generator: nn.Module, improved: bool, final: bool) -> None:
        if self.rank != 0 or step <= self.eval_floor or self.cfg is None or self.image_shape is None:
            return
        self._check_lease()
        if improved:
            self.best_epoch = epoch
        if improved or final:
            self._deliver({"kind": "scored", "epoch": epoch, "step": step, "generator": generator,
                           "improved": improved, "final": final})

    def on_copies(self, epoch: int, step: int, panel: np.ndarray) -> None:
        if self.rank != 0 or step <= self.eval_floor:
            return
        self._check_lease()
        self._deliver({"kind": "copies", "epoch": epoch, "step": step, "grid": upscale(panel)})

    def on_eval(self, epoch: int, step: int, grid: np.ndarray, metrics: dict[str, float]) -> None:
        if self.rank != 0 or step <= self.eval_floor:
            return
        self._check_lease()
        big = upscale(grid)
        event = {"kind": "eval", "epoch": epoch, "step": step, "grid": big, "ts": _now_ms(),
                 "metrics": {k: float(v) for k, v in metrics.items()}}
        if step in {s for s, _ in self.frames}:  # drawn unscored before a resume, scored this time
            event["image_there"] = True
        else:
            self.frames.append((step, big))
        self._deliver(event)

    def on_grid(self, epoch: int, step: int, grid: np.ndarray) -> None:
        """An eval_every epoch the budget did not score: its grid on the slider, in
        grids/ and in the GIF all the same. A grid the run already holds (an epoch redone
        after a resume from an older checkpoint) is not logged twice."""
        if self.rank != 0 or step <= self.eval_floor or step in {s for s, _ in self.frames}:
            return
        self._check_lease()
        big = upscale(grid)
        self.frames.append((step, big))
        self._deliver({"kind": "grid", "epoch": epoch, "step": step, "grid": big})

    def on_checkpoint(self, epoch: int, step: int, state: dict[str, Any]) -> None:
        if self.rank != 0 or step < self.floor:
            return
        self._check_lease()
        with tempfile.TemporaryDirectory(prefix="gan-ckpt-") as tmp:
            self.log_checkpoint(save_checkpoint(state, Path(tmp) / checkpoint_name(epoch)), step)

    def log_checkpoint(self, path: Path, step: int) -> None:
        """Upload a checkpoint file someone already wrote (a Ray Train worker's, say), then
        drop the ones the retention policy no longer keeps."""
        if self.rank == 0 and step >= self.floor:
            epoch = int(Path(path).stem.split("_")[-1])
            self._deliver({"kind": "checkpoint", "epoch": epoch, "step": step, "path": path})

    def _send(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "metrics":
            self._send_metrics(event["rows"], event.get("ts") or _now_ms())
        elif kind == "scored":
            self._send_scored(event["epoch"], event["step"], event["generator"], event["improved"], event["final"])
        elif kind == "copies":
            self._send_copies(event["epoch"], event["step"], event["grid"])
        elif kind == "grid":
            self._send_grid(event["epoch"], event["step"], event["grid"], image=not event.get("image_there"))
        elif kind == "eval":
            self._send_eval(event["epoch"], event["step"], event["grid"], event["metrics"],
                            event.get("ts") or _now_ms(), image=not event.get("image_there"))
        elif kind == "checkpoint" and Path(event["path"]).exists():  # else dropped by retention
            self._send_checkpoint(Path(event["path"]))

    def _send_metrics(self, rows: list[tuple[int, dict[str, float]]], ts: int) -> None:
        from mlflow.entities import Metric

        batch = [Metric(k, v, ts, s) for s, r in rows for k, v in {**r, **self._kimg(s)}.items()]
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + _BATCH])

    def _send_scored(self, epoch: int, step: int, generator: nn.Module, improved: bool, final: bool) -> None:
        assert self.cfg is not None and self.image_shape is not None
        roles = [r for r, on in ((BEST, improved), (FINAL, final)) if on]
        model_id = log_model(self.client, self.run_id, self.cfg, generator, self.image_shape,
                             role=",".join(roles), epoch=epoch, step=step)
        self.model_at = (step, model_id)
        # A run keeps one model per role: an extended run's earlier final generator is final
        # no more, and the best it replaces (maybe "best,final") keeps only its other role.
        if final:
            drop_role(self.client, self.run_id, FINAL, keep=model_id)
        if improved:
            drop_role(self.client, self.run_id, BEST, keep=model_id)

    def _send_eval(self, epoch: int, step: int, big: np.ndarray, metrics: dict[str, float], ts: int,
                   image: bool = True) -> None:
        from mlflow.entities import Metric

        self._send_grid(epoch, step, big, image=image)
        values = {**metrics, names.EPOCH: float(epoch), **self._kimg(step)}
        # Scores of a generator kept as a LoggedModel are linked to it: the Models tab and
        # search_logged_models rank models by their own numbers.
        model_id = self.model_at[1] if self.model_at and self.model_at[0] == step else None
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step, model_id=model_id)
                                                    for k, v in values.items()])

    def _send_grid(self, epoch: int, step: int, big: np.ndarray, image: bool = True) -> None:
        """image=False: the run already holds this step's image (a replay), only the
        grids/epoch_NNN.png copy is written again (same name: it overwrites)."""
        if image:
            self.client.log_image(self.run_id, big, key=names.GRID_KEY, step=step)
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="gan-grid-") as tmp:
            path = Path(tmp) / f"epoch_{epoch:03d}.png"
            Image.fromarray(big).save(path)
            self.client.log_artifact(self.run_id, str(path), names.GRIDS_DIR)

    def _send_copies(self, epoch: int, step: int, panel: np.ndarray) -> None:
        """The panel under a fixed name (a replay overwrites it), named on the model it is of."""
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="gan-copies-") as tmp:
            path = Path(tmp) / f"epoch_{epoch:03d}.png"
            Image.fromarray(panel).save(path)
            self.client.log_artifact(self.run_id, str(path), names.COPY_DIR)
        if self.model_at and self.model_at[0] == step:
            panel_path = f"{names.COPY_DIR}/{path.name}"
            self.client.set_logged_model_tags(self.model_at[1], {names.MODEL_COPY_PANEL: panel_path})

    def _send_checkpoint(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), names.CHECKPOINT_DIR)
        if self.cfg is not None and self.cfg.keep_checkpoints > 0:
            keep_best = checkpoint_name(self.best_epoch) if self.best_epoch else None
            prune_checkpoints(self.client, self.run_id, self.cfg.keep_checkpoints, keep_best)

    def _kimg(self, step: int) -> dict[str, float]:
        if self.cfg is None:
            return {}
        return {names.KIMG: step * self.cfg.batch_size * self.cfg.n_dis / 1000}

    def _log_untrained(self) -> None:
        """The grid of the generator before its first step (train() seeds cfg.seed, then
        builds the models: the same weights; a warm start's loaded ones), so the slider
        starts at step 0. Drawn mid-run (at the first metrics): the weights come from a
        fork of the global RNG, so the training stream (checkpointed, and what a resumed
        run continues) is not moved by logging; the latents have their own generator."""
        if self.cfg is None or self.image_shape is None:
            return
        import torch

        with torch.random.fork_rng(devices=[]):  # the generator is built on the CPU
            torch.manual_seed(self.cfg.seed)  # as train() seeds before it builds its own
            generator = self._empty_generator()
        if self.warm is not None:  # what train() samples from at step 0: the EMA copy when it has one
            ema = self.cfg.ema > 0 and self.warm.get("G_ema")
            generator.load_state_dict(self.warm["G_ema"] if ema else self.warm["G"])
        big = upscale(image_grid(generate(generator, fixed_latents(self.cfg.latent_dim, self.cfg.seed))))
        self.frames.append((0, big))
        self._deliver({"kind": "grid", "epoch": 0, "step": 0, "grid": big})

    def _empty_generator(self) -> nn.Module:
        from gan.models import build_models

        assert self.cfg is not None and self.image_shape is not None
        c, h, w = self.image_shape
        return build_models(self.cfg, (c, h, w))[0]

def send_offline_writes(client: Any, run_id: str) -> None:
    """What an earlier life of the run trained while its tracking server was away (kept on
    this machine's disk), sent before the run continues, so a resume starts after it."""
    outbox = Outbox(run_id)
    if not outbox.exists():
        return
    outbox.check_writer_gone()
    meta = outbox.meta() or {}
    cfg = make_config(meta["cfg"]) if meta.get("cfg") else None
    shape = tuple(meta.get("image_shape") or ()) or None
    if not MlflowCallbacks(client, run_id, cfg=cfg, image_shape=shape).send_kept():
        raise TrackingLost(f"run {run_id}: the tracking server went away again while sending what {outbox.dir} "
                           "keeps; it stays there for the next --resume")


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_callbacks(client: Any, run_id: str, cfg: RunConfig, image_shape: tuple[int, ...], restored: Restored,
                  owner: str, lease: Any) -> MlflowCallbacks:
    """The loop's MLflow callbacks for a run continuing from `restored`, writing as `owner`."""
    return MlflowCallbacks(client, run_id, floor=restored.floor, eval_floor=restored.eval_floor,
                           frames=restored.frames, cfg=cfg, image_shape=image_shape, owner=owner, lease=lease,
                           warm=restored.warm)
