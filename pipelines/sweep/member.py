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

A resumed sweep (driver killed) starts a member from the checkpoint Tune last gave it.
The same exploit again (same donor checkpoint, same values) is recorded once, and its steps
go where they went the first time: the run's floors skip what it already logged. Any other
start at or before an exploit the run records (the round redone, copying the other member
of the top quarter or with other values, or the member's own checkpoint) supersedes that
exploit: its row stays in pbt/exploits.json, marked superseded (the steps its life logged
are history), the new start is recorded as the run's exploit at that epoch, and the new
life's steps go on after the last one the run holds, so no step is logged twice.
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
from pipelines.tracking.exploits import SUPERSEDED, exploit_rows, exploits, write_exploit_rows
from pipelines.tracking.history import Restored, last_logged_step, logged_config, logged_grids
from pipelines.tracking.runs import Loop, TrackedRun

STATE_FILE, INFO_FILE = "state.pt", "member.json"


@dataclass
class Life:
    """Where a member's life starts: `state` (None: from scratch), the step shift, and
    the exploit that started it (None: its own checkpoint, or its first life).
    `supersedes`: its own checkpoint's epoch when the run records an exploit at or after
    it (a driver's restart took that exploit back); its run step then (`step`)."""

    state: dict[str, Any] | None = None
    shift: int = 0
    exploit: dict[str, Any] | None = None
    supersedes: int | None = None
    step: int = 0


def write_checkpoint(folder: Path, state: dict[str, Any], info: dict[str, Any]) -> Path:
    """The checkpoint a member hands to Tune at a perturbation epoch: its full training
    state and who wrote it (the trial, run and node a copier records as its donor)."""
    save_checkpoint(state, folder / STATE_FILE)
    (folder / INFO_FILE).write_text(json.dumps({**info, "node": _node()}))
    return folder


def begin_life(client: Any, run_id: str, trial_id: str, checkpoint: Any, cfg: RunConfig) -> Life:
    """This life's start from Tune's checkpoint (tune.get_checkpoint(): None on a first
    life), training `cfg` (as the loop trains it: the values an exploit handed it)."""
    if checkpoint is None:
        return Life()
    with checkpoint.as_directory() as folder:
        # weights_only: a checkpoint on shared storage is data, never code
        state = load_checkpoint(Path(folder) / STATE_FILE)
        info = json.loads((Path(folder) / INFO_FILE).read_text())
    epoch = int(state["epoch"])
    recorded = exploits(client, run_id)
    if info["trial_id"] == trial_id:
        if not any(e["epoch"] >= epoch for e in recorded):
            return Life(state, int(state.get(SHIFT_KEY, 0)))
        # Its own weights at `epoch`, yet its run records an exploit there or later: the
        # driver was restarted mid-round and Tune gave it back its own checkpoint. The life
        # that exploit started logged steps of its own: this one goes on after them.
        floor = last_logged_step(client, run_id)
        shift = floor - int(state["step"])
        return Life({**state, SHIFT_KEY: shift}, shift, supersedes=epoch, step=floor)
    exploit: dict[str, Any] = {"epoch": epoch, "from_run_id": info["run_id"], "from_run_name": info["run_name"],
                               "from_trial_id": info["trial_id"], "from_step": int(state["step"]),
                               "values": json.dumps(_mutable_values(cfg))}
    again = _recorded_as(recorded, exploit)
    # The same exploit again (a resumed sweep restarts a member Tune had handed the donor's
    # checkpoint, with the same values): its steps go where they went the first time (the
    # run's floors skip what that life already logged), not after them. Any other start
    # supersedes what is recorded from this epoch on, and goes on after all the run holds.
    floor = int(again["step"]) if again else last_logged_step(client, run_id)
    metrics = client.get_run(run_id).data.metrics
    own_best = {k: metrics[f"best_{k}"] for k in (names.FID, names.KID) if f"best_{k}" in metrics}
    exploit = {"epoch": epoch, "step": floor, **exploit, "from_node": info.get("node", ""), "node": _node()}
    shift = floor - int(state["step"])
    # The state carries the shift it trains with: Ray Train workers read it there
    return Life({**state, "best": own_best, SHIFT_KEY: shift}, shift, exploit)


def _mutable_values(cfg: RunConfig) -> dict[str, Any]:
    values = cfg.to_dict()
    return {k: values[k] for k in MUTABLE}


def _recorded_as(recorded: list[dict[str, Any]], exploit: dict[str, Any]) -> dict[str, Any] | None:
    """The exploit's own row when the run records exactly it (the same donor checkpoint and
    values at its epoch) as its last: a restart of the life it started. None otherwise."""
    same = [e for e in recorded if e["epoch"] == exploit["epoch"] and e["from_run_id"] == exploit["from_run_id"]
            and int(e["from_step"]) == exploit["from_step"]
            and json.loads(e["values"]) == json.loads(exploit["values"])]
    later = [e for e in recorded if e["epoch"] > exploit["epoch"]]
    return same[0] if same and not later else None


def _node() -> str:
    """The Ray node this life runs on (an exploit may copy a checkpoint written on another)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def record_start(client: Any, run_id: str, cfg: RunConfig, life: Life, fresh: bool) -> None:
    """A first life logs the values it starts with at step 0; an exploit is recorded; a
    start from its own checkpoint that takes recorded exploits back says so."""
    if fresh:
        _log_values(client, run_id, cfg, 0)
    if life.exploit is not None:
        record_exploit(client, run_id, cfg, life.exploit)
    elif life.supersedes is not None:
        _supersede(client, run_id, life.supersedes, life.step, f"its own checkpoint at epoch {life.supersedes}")
        _record_training(client, run_id, cfg, life.step)


def record_exploit(client: Any, run_id: str, cfg: RunConfig, exploit: dict[str, Any]) -> None:
    """The exploit as a row of pbt/exploits.json, the count and the last one as tags, the new
    values as pbt/<param> metrics from its step, and config.yaml as the run trains now.
    Idempotent: a resumed sweep restarting the same exploit records it once. An exploit
    recorded at its epoch or later that is not this one (a redone round copied another
    member, or other values) is superseded: kept as a row, marked, the tags follow this one."""
    if _recorded_as(exploits(client, run_id), exploit) is not None:
        return
    rows = exploit_rows(client, run_id)
    before = logged_config(client, run_id) or {}
    # config.yaml is as the last exploit left it: those this one supersedes are undone,
    # newest first (each row keeps what it changed from), so its changes are from the
    # config the member trained before this epoch, not from an abandoned life's
    for row in reversed([r for r in rows if _holds_from(r, exploit["epoch"])]):
        before = {**before, **json.loads(row.get("before") or "{}")}
    now = cfg.to_dict()
    changed = {k: (before.get(k), now[k]) for k in now if before.get(k) != now[k] and k != "seed"}
    change = "; ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in sorted(changed.items())) or "no change"
    rows = _superseded(rows, exploit["epoch"], int(exploit["step"]), f"{exploit['from_run_name']}'s checkpoint")
    rows.append({**exploit, "changes": change, "values": json.dumps(_mutable_values(cfg)),
                 "before": json.dumps({k: a for k, (a, _) in changed.items()}), SUPERSEDED: ""})
    write_exploit_rows(client, run_id, rows)
    _record_training(client, run_id, cfg, int(exploit["step"]))


def _superseded(rows: list[dict[str, Any]], epoch: int, step: int, instead: str) -> list[dict[str, Any]]:
    """`rows` with each exploit that held at `epoch` or later marked superseded."""
    why = (f"superseded at step {step}: the sweep's driver was restarted and this member went on "
           f"from {instead} at epoch {epoch}")
    return [{**r, SUPERSEDED: why} if _holds_from(r, epoch) else r for r in rows]


def _holds_from(row: dict[str, Any], epoch: int) -> bool:
    """Whether `row` is an exploit that holds, at `epoch` or later."""
    return int(row["epoch"]) >= epoch and not row.get(SUPERSEDED)


def _supersede(client: Any, run_id: str, epoch: int, step: int, instead: str) -> None:
    write_exploit_rows(client, run_id, _superseded(exploit_rows(client, run_id), epoch, step, instead))


def _record_training(client: Any, run_id: str, cfg: RunConfig, step: int) -> None:
    """After its exploits changed: the count and the last one as tags, the config it trains
    now as config.yaml, and its values as pbt/<param> metrics from `step` on."""
    held = exploits(client, run_id)
    client.set_tag(run_id, names.PBT_EXPLOITS, str(len(held)))
    if held:
        last = held[-1]
        client.set_tag(run_id, names.PBT_LAST_EXPLOIT,
                       f"epoch {last['epoch']}: copied {last['from_run_name']} "
                       f"(run {last['from_run_id']}); {last['changes']}"[:5000])
    elif names.PBT_LAST_EXPLOIT in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, names.PBT_LAST_EXPLOIT)
    client.log_text(run_id, cfg.to_yaml(), names.CONFIG_FILE)
    _log_values(client, run_id, cfg, _unvalued_step(client, run_id, step))


def _unvalued_step(client: Any, run_id: str, step: int) -> int:
    """`step`, or the first after it with no values logged: a superseded exploit after
    which nothing was trained logged its values at the step the new one starts from, and a
    step is logged once (the new values hold from the next step on, the first the new
    life trains). Every pbt/<param> is logged at the same steps (_log_values)."""
    taken = {m.step for m in client.get_metric_history(run_id, f"{names.PBT_VALUE_PREFIX}{MUTABLE[0]}")}
    while step in taken:
        step += 1
    return step


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

    # as the loop trains it (Ray Train workers read the data from an absolute data_dir): an
    # exploit's changes are the values that changed, not where the config was resolved
    trains = loop.prepare(cfg)
    life = begin_life(run.client, run.run_id, trial_id, tune.get_checkpoint(), trains)
    to_tune.member = {"trial_id": trial_id, "run_id": run.run_id, "run_name": to_tune.name}
    record_start(run.client, run.run_id, trains, life, run.fresh)
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
