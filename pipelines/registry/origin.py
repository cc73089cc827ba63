"""Where a new run comes from: `train --from RUN_ID|models:/...` and `--warm`.

The source is a training run (a sweep trial, any `train` run), named by its id or by a
model URI whose source run is used. What is taken from it: its resolved config (its
config.yaml artifact, which alone reproduces it; its params omit a sweep's inactive
values), and with `--warm` the checkpoint of its best eval (of the named model's epoch
for a models:/ URI), loaded weights_only. What the new run says about it: lineage tags
(tracking.names FROM_*, WARM_START_*) and a description linking the source's page.

Everything here reads; nothing is created. The CLI calls it before the new run exists,
so a bad source is one line and exit 2 with nothing left behind.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.checkpoint import checkpoint_name, load_checkpoint
from gan.config import RunConfig
from pipelines.errors import TrackingError
from pipelines.registry.lookup import is_not_found, resolve_model
from pipelines.tracking import names
from pipelines.tracking.history import NoIntactCheckpoint, latest_checkpoint, logged_config
from pipelines.tracking.models import BEST, model_with_role

ALLOWED = "give a training run's id or a model URI (models:/<model_id>, models:/NAME/VERSION, models:/NAME@alias)"
# What a warm start takes from a checkpoint: the networks and the optimizers' moments. Not
# its clock, RNG, best scores or eval budget: the new run has its own (gan.train `warm`).
WARM_KEYS = ("G", "D", "G_ema", "opt_g", "opt_d", "scalers", "config", "epoch", "step")


@dataclass(frozen=True)
class Origin:
    """The run a new one starts from: `ref` as the user gave it, the source `run` (an
    MLflow Run), its config.yaml values, and the LoggedModel a models:/ URI named."""

    ref: str
    run: Any
    config: dict[str, Any]
    model: Any = None

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)


@dataclass(frozen=True)
class WarmStart:
    """The checkpoint a fine-tune starts from (its weights and optimizer states: `state`,
    gan.train's `warm`), which epoch and step it was taken at, and whether it is the best
    eval's (else the newest: the best epoch kept no checkpoint)."""

    state: dict[str, Any]
    epoch: int
    step: int
    path: str
    best: bool


def find_origin(client: Any, ref: str) -> Origin:
    """The source run `--from ref` names, with its config.yaml; a TrackingError (one line)
    for anything that is not a training run of this store."""
    model = None
    if ref.startswith("models:/"):
        model, run = resolve_model(client, ref)
        if run is None:
            raise TrackingError(f"--from {ref}: no such model in this store, or it has no source run; {ALLOWED}")
    elif "/" in ref or ":" in ref:
        raise TrackingError(f"--from {ref} is invalid: {ALLOWED}")
    else:
        try:
            run = client.get_run(ref)
        except Exception as e:
            if is_not_found(e):
                raise TrackingError(f"--from {ref}: no such run in this store; {ALLOWED}") from None
            raise
    run_id = run.info.run_id
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError(f"--from {ref}: run {run_id} is deleted; restore it first, or {ALLOWED}")
    if run.data.tags.get(names.SWEEP_ROLE) == names.SWEEP_PARENT:
        raise TrackingError(f"--from {ref}: run {run_id} is a sweep's parent, not a training run: give one of "
                            "its trials' run ids (its description lists the best), or a models:/ URI")
    return Origin(ref, run, _logged_config(client, ref, run_id), model)


def _logged_config(client: Any, ref: str, run_id: str) -> dict[str, Any]:
    values = logged_config(client, run_id)
    if values is None:
        raise TrackingError(f"--from {ref}: run {run_id} has no {names.CONFIG_FILE}, so it is not a gan-pipelines "
                            f"training run; {ALLOWED}")
    if not isinstance(values, dict):
        raise TrackingError(f"--from {ref}: its {names.CONFIG_FILE} holds no mapping of key: value; {ALLOWED}")
    return values


def warm_start(client: Any, origin: Origin) -> WarmStart:
    """The checkpoint `--warm` fine-tunes: the one of the named model's epoch (models:/),
    else of the run's best eval; when that epoch kept none (checkpoint_every skipped it) or
    it does not load, the newest intact one. Every file is loaded weights_only."""
    run_id = origin.run_id
    model = origin.model or model_with_role(client, run_id, BEST)
    wanted = checkpoint_name(int(model.tags[names.MODEL_EPOCH])) if model and names.MODEL_EPOCH in model.tags else None
    kept = {Path(a.path).name for a in client.list_artifacts(run_id, names.CHECKPOINT_DIR)}
    with tempfile.TemporaryDirectory(prefix="gan-warm-") as tmp:
        state, best = None, False
        if wanted in kept:
            try:
                state, best = load_checkpoint(client.download_artifacts(
                    run_id, f"{names.CHECKPOINT_DIR}/{wanted}", tmp)), True
            except Exception:  # noqa: BLE001 - torn or refused: the newest intact one below, as a resume does
                state = None
        if state is None:
            try:
                state = latest_checkpoint(client, run_id, tmp)
            except NoIntactCheckpoint as e:
                raise TrackingError(f"--from {origin.ref} --warm: {e}; train without --warm") from None
    if state is None:
        raise TrackingError(f"--from {origin.ref} --warm: run {run_id} has no checkpoint to start from; "
                            "train without --warm (its config only)")
    epoch = int(state["epoch"])
    return WarmStart({k: state[k] for k in WARM_KEYS if k in state}, epoch, int(state["step"]),
                     f"{names.CHECKPOINT_DIR}/{checkpoint_name(epoch)}", best)


def lineage_tags(origin: Origin, cfg: RunConfig, warm: WarmStart | None) -> dict[str, str]:
    """The new run's tags that name where it came from, and its description (markdown,
    the run page's Description) linking the source run's page."""
    from pipelines.tracking.store import run_url

    run = origin.run
    tags = {names.FROM_RUN_ID: origin.run_id}
    if origin.model is not None:
        tags[names.FROM_MODEL_ID] = str(origin.model.model_id)
    sweep = run.data.tags.get(names.SWEEP_NAME)
    if sweep:
        tags[names.FROM_SWEEP] = sweep
    if warm is not None:
        tags.update({names.WARM_START_FROM: origin.run_id, names.WARM_START_EPOCH: str(warm.epoch),
                     names.WARM_START_STEP: str(warm.step)})
    # A link relative to the UI ("#/experiments/..."): it opens in whatever host serves the store.
    link = f"[{run.info.run_name or origin.run_id}]({run_url('', run.info.experiment_id, origin.run_id)})"
    how = f" via `{origin.ref}`" if origin.ref != origin.run_id else ""
    lines = [f"**Started from run {link}** (`{origin.run_id}`" + (f", sweep `{sweep}`" if sweep else "")
             + f"){how}: its resolved `{names.CONFIG_FILE}`, " + _changes(origin.config, cfg) + "."]
    if warm is not None:
        which = "its best eval's checkpoint" if warm.best else "its newest checkpoint (its best epoch kept none)"
        lines += ["", f"**Fine-tune (warm start)**: G, D, EMA and optimizer states from {which} `{warm.path}` "
                  f"(epoch {warm.epoch}, step {warm.step}); this run's epochs and steps count from 0."]
    return {**tags, names.NOTE: "\n".join(lines)}


def _changes(source: dict[str, Any], cfg: RunConfig) -> str:
    new = cfg.to_dict()
    changed = [f"`{k}={new[k]}`" for k in new if k in source and source[k] != new[k]]
    changed += [f"`{k}={new[k]}`" for k in new if k not in source]  # a field newer than the source's config
    return "with " + ", ".join(changed) + " changed" if changed else "unchanged"
