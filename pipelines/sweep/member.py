"""One life of a population member (population.py) in its trial process, and the record
of each exploit on the member's MLflow run.

Synchronous PBT stops every member at each perturbation epoch; Tune then starts each
again from a checkpoint: its own, or (exploited) another member's, with new values. A
member's MLflow run lives through all of it as one run:

    its own checkpoint    the clock, RNG, best scores and step shift go on as they were
    another member's      G, D, EMA, both optimizers (the new learning rates and betas
                          applied by gan.checkpoint.load_weights), AMP scalers, RNG, epoch
                          and the training step are the donor's; the run's logged steps go
                          on from its own last one (a step shift: the donor may have taken
                          fewer steps, at another batch size) and its best scores stay its
                          own (its `best` model is the best this run logged). The exploit
                          is written on the run: a row in pbt/exploits.json, tags, the new
                          values as pbt/<param> metrics at that step, config.yaml replaced
                          by the config it trains now (params keep its first config)

A resumed sweep (driver killed) starts a member from the checkpoint Tune last gave it:
steps the run already holds are not logged again (the run's floors), and an exploit
already recorded is not recorded twice.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.callbacks import SHIFT_KEY
from gan.checkpoint import load_checkpoint, save_checkpoint
from gan.config import RunConfig
from gan.data import Dataset
from pipelines.sweep.population import MUTABLE
from pipelines.tracking import names
from pipelines.tracking.exploits import exploits
from pipelines.tracking.history import Restored, last_logged_step, logged_config, logged_grids
from pipelines.tracking.runs import Loop, TrackedRun

STATE_FILE, INFO_FILE = "state.pt", "member.json"


@dataclass
class Life:
    """Where a member's life starts: `state` (None: from scratch), the step shift, and
    the exploit that started it (None: its own checkpoint, or its first life)."""

    state: dict[str, Any] | None = None
    shift: int = 0
    exploit: dict[str, Any] | None = None


def write_checkpoint(folder: Path, state: dict[str, Any], info: dict[str, Any]) -> Path:
    """The checkpoint a member hands to Tune at a perturbation epoch: its full training
    state and who wrote it (the trial, run and node a copier records as its donor)."""
    save_checkpoint(state, folder / STATE_FILE)
    (folder / INFO_FILE).write_text(json.dumps({**info, "node": _node()}))
    return folder


def begin_life(client: Any, run_id: str, trial_id: str, checkpoint: Any) -> Life:
    """This life's start from Tune's checkpoint (tune.get_checkpoint(): None on a first life)."""
    if checkpoint is None:
        return Life()
    with checkpoint.as_directory() as folder:
        # weights_only: a checkpoint on shared storage is data, never code
        state = load_checkpoint(Path(folder) / STATE_FILE)
        info = json.loads((Path(folder) / INFO_FILE).read_text())
    if info["trial_id"] == trial_id:
        return Life(state, int(state.get(SHIFT_KEY, 0)))
    done = [e for e in exploits(client, run_id)
            if e["epoch"] == int(state["epoch"]) and e["from_run_id"] == info["run_id"]]
    # The same exploit again (a resumed sweep restarts a member Tune had handed the donor's
    # checkpoint): its steps go where they went the first time (the run's floors skip
    # what that life already logged), not after them.
    floor = int(done[0]["step"]) if done else last_logged_step(client, run_id)
    metrics = client.get_run(run_id).data.metrics
    own_best = {k: metrics[f"best_{k}"] for k in (names.FID, names.KID) if f"best_{k}" in metrics}
    exploit = {"epoch": int(state["epoch"]), "step": floor, "from_run_id": info["run_id"],
               "from_run_name": info["run_name"], "from_trial_id": info["trial_id"],
               "from_step": int(state["step"]), "from_node": info.get("node", ""), "node": _node()}
    shift = floor - int(state["step"])
    # The state carries the shift it trains with: Ray Train workers read it there
    return Life({**state, "best": own_best, SHIFT_KEY: shift}, shift, exploit)


def _node() -> str:
    """The Ray node this life runs on (an exploit may copy a checkpoint written on another)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def record_start(client: Any, run_id: str, cfg: RunConfig, life: Life, fresh: bool) -> None:
    """A first life logs the values it starts with at step 0; an exploit is recorded."""
    if fresh:
        _log_values(client, run_id, cfg, 0)
    if life.exploit is not None:
        record_exploit(client, run_id, cfg, life.exploit)


def record_exploit(client: Any, run_id: str, cfg: RunConfig, exploit: dict[str, Any]) -> None:
    """The exploit as a row of pbt/exploits.json, the count and the last one as tags, the new
    values as pbt/<param> metrics from its step, and config.yaml as the run trains now.
    Idempotent: a resumed sweep restarting the same exploit records it once."""
    recorded = exploits(client, run_id)
    if any(e["epoch"] == exploit["epoch"] for e in recorded):
        return
    before = logged_config(client, run_id) or {}
    now = cfg.to_dict()
    changed = {k: (before.get(k), now[k]) for k in now if before.get(k) != now[k] and k != "seed"}
    change = "; ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in sorted(changed.items())) or "no change"
    row = {**exploit, "changes": change, "values": json.dumps({k: now[k] for k in MUTABLE})}
    client.log_table(run_id, data={k: [v] for k, v in row.items()}, artifact_file=names.PBT_EVENTS_FILE)
    client.set_tag(run_id, names.PBT_EXPLOITS, str(len(recorded) + 1))
    client.set_tag(run_id, names.PBT_LAST_EXPLOIT,
                   f"epoch {exploit['epoch']}: copied {exploit['from_run_name']} "
                   f"(run {exploit['from_run_id']}); {change}"[:5000])
    client.log_text(run_id, cfg.to_yaml(), names.CONFIG_FILE)
    _log_values(client, run_id, cfg, int(exploit["step"]))


def _log_values(client: Any, run_id: str, cfg: RunConfig, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = cfg.to_dict()
    client.log_batch(run_id, metrics=[Metric(f"{names.PBT_VALUE_PREFIX}{k}", float(values[k]), now, step)
                                      for k in MUTABLE])


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def member_life(run: TrackedRun, cfg: RunConfig, data: Dataset, loop: Loop, to_tune: Any,
                trial_id: str, inactive: tuple[str, ...]) -> Restored | None:
    """A member's start in its trial (trial.run_trial; `to_tune` its TuneCallbacks): from
    scratch (None: the usual start), or from the checkpoint Tune handed it, its own or an
    exploited member's, recorded. Returns what TrackedRun.train_and_close continues from."""
    from ray import tune

    life = begin_life(run.client, run.run_id, trial_id, tune.get_checkpoint())
    to_tune.member = {"trial_id": trial_id, "run_id": run.run_id, "run_name": to_tune.name}
    # as the loop trains it (Ray Train workers read the data from an absolute data_dir): an
    # exploit's changes are the values that changed, not where the config was resolved
    record_start(run.client, run.run_id, loop.prepare(cfg), life, run.fresh)
    if life.state is None:
        if run.fresh:
            return None  # the usual start
        # Tune holds no checkpoint of it yet (a resumed sweep's member killed before its
        # first perturbation epoch): its run's own newest checkpoint, with that life's shift.
        restored = run.restore()
        to_tune.shift = int((restored.state or {}).get(SHIFT_KEY, 0))
        return restored
    if run.fresh:  # Tune has a checkpoint but the run is new (its first life's run was lost)
        run.start(cfg, loop.where, data, inactive)
    to_tune.shift = life.shift
    restored = run.restore(checkpoint=False)
    restored.state = life.state
    with tempfile.TemporaryDirectory(prefix="gan-grids-") as tmp:
        restored.frames = logged_grids(run.client, run.run_id, tmp)
    return restored


class PausingLoop:
    """A distributed member's loop (tracking.runs.Loop around TuneStoppableLoop and
    RayTrainLoop): Tune's reports from Ray Train workers carry no checkpoint of the
    trial's own, so each life is one Ray Train run that stops at the next perturbation
    epoch (RayTrainLoop.pause_at), and this trial hands that epoch's scores and state to
    Tune itself (TuneCallbacks.hand_over): PBT pauses it there, as it does a one-worker
    member in its report."""

    def __init__(self, inner: Any, workers: Any, to_tune: Any) -> None:
        # `workers`: the RayTrainLoop inside `inner`, which keeps its last checkpoint's state
        self.inner, self.workers, self.to_tune = inner, workers, to_tune
        self.restores_itself = inner.restores_itself

    @property
    def where(self) -> dict[str, Any]:
        return self.inner.where

    def prepare(self, cfg: RunConfig) -> RunConfig:
        return self.inner.prepare(cfg)

    def fit(self, run: TrackedRun, cfg: RunConfig, restored: Restored) -> Any:
        while True:
            result = self.inner.fit(run, cfg, restored)
            state = self.workers.last_state
            epoch = result.epochs_done
            if result.diverged or state is None or epoch not in self.to_tune.perturb:
                return result  # its last epoch (never a perturbation epoch), or it failed
            step, scores = result.eval_history[-1] if result.eval_history else (int(state["step"]), {})
            self.to_tune.scored(epoch, step, {k: v for k, v in scores.items()
                                              if not k.startswith(names.PBT_VALUE_PREFIX)})
            self.to_tune.hand_over(epoch, state)  # PBT pauses it here: SystemExit
            # PBT let it go on (a round it had no say in): the next life starts from here
            restored = dataclasses.replace(restored, state=state)
