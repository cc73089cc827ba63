"""A sweep as the store and its Tune folder hold it once it ran, written in milliseconds:
a parent run tagged as a sweep's, its saved settings and space, and child runs with the
params and scores trials log. For the refusals of `sweep --resume NAME --trials N` and
`sweep --warm-start NAME`, which read exactly these records and must stop before any
Ray or training starts (tests/test_bad_input.py, tests/test_sweep_seeding.py run the
real thing)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import yaml
from conftest import sqlite_store

from pipelines.sweep.options import Sweep
from pipelines.tracking import names

EXPERIMENT = "gan-pipelines"
FIXED = {"dataset": "mnist-5k", "epochs": 1, "eval_samples": 100, "latent_dim": 16, "batch_size": 256,
         "arch": "mlp", "mlp_width": 8, "device": "cpu", "eval_budget": 0}
LR_G = {"type": "float", "low": 1e-4, "high": 2e-3, "log": True}


def space_file(folder: Path, name: str, lr_g: dict | None = None) -> Path:
    """A tiny space searching lr_g only (range `lr_g`, default LR_G)."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"params": {**FIXED, "lr_g": lr_g or LR_G}}))
    return path


def recorded_sweep(folder: Path, name: str, trials: list[tuple[float, float | None]], *,
                   status: str = "FINISHED", driver_alive: bool = False, pruned: int = 0,
                   tags: dict[str, str] | None = None) -> str:
    """Sweep `name` in the store at folder/store (made if needed): one child run per
    (lr_g, fid) in `trials` (fid None: a FAILED trial; the last `pruned` ones: stopped by
    ASHA after epoch 1 of 2). driver_alive: its parent holds a fresh lease of this
    process, as a sweep whose driver still runs; `tags`: more tags on the parent. Returns
    the store URI."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from pipelines.tracking.lease import new_owner

    uri = sqlite_store(folder / "store")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    space = space_file(folder, f"space-{name}")
    opts = Sweep(space=str(space), trials=len(trials), concurrency=1, scheduler="none", grace_period=1,
                 searcher="tpe", experiment=EXPERIMENT, seed=0, name=name, workers_per_trial=1,
                 cpus_per_trial=1.0, gpus_per_trial=0.0, storage_path=str(folder / "tune"), ray_address=None)
    opts.folder.mkdir(parents=True)
    (opts.folder / "space.yaml").write_text(space.read_text())
    (opts.folder / "sweep.json").write_text(json.dumps(dataclasses.asdict(opts)))
    tags = {names.SWEEP_ROLE: names.SWEEP_PARENT, names.SWEEP_NAME: name, names.SWEEP_STORAGE: str(opts.folder),
            **(tags or {})}
    if driver_alive:
        tags |= {names.LEASE_OWNER: new_owner(), names.LEASE_HEARTBEAT: f"{time.time():.0f}"}
    parent = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    now = int(time.time() * 1000)
    for i, (lr_g, fid) in enumerate(trials, 1):
        run = client.create_run(exp_id, run_name=f"t{i:02d} lr_g={lr_g:g}",
                                tags={names.PARENT_RUN: parent, names.SWEEP_NAME: name, names.TRIAL_ID: f"x_{i}"})
        params = {**{k: str(v) for k, v in FIXED.items()}, "lr_g": str(lr_g), "backbone": "classifier"}
        metrics = [Metric(names.FID, fid, now, 1), Metric(names.EPOCH, 1, now, 1)] if fid is not None else []
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        if i > len(trials) - pruned:
            client.set_tag(run.info.run_id, names.STOPPED_REASON, "tune: stopped by the scheduler after epoch 1")
            client.set_terminated(run.info.run_id, "KILLED")
        else:
            client.set_terminated(run.info.run_id, "FINISHED" if fid is not None else "FAILED")
    if status != "RUNNING":
        client.set_terminated(parent, status)
    return uri
