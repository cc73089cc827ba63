"""What a perturbation costs a population member, in one process and on Ray Train workers.

    python benchmarks/bench_member_lives.py            # 4 sweeps, about 8 minutes on 2 cores

Synchronous PBT pauses every member at each perturbation epoch and starts it again from a
checkpoint: a new life. A one-worker member's life is a new call of its trial function
(Tune restores the checkpoint; the trial process is reused). A member on N Ray Train
workers (`--workers-per-trial N`) also starts a new Ray Train run each life: controller,
worker group, process group, data and evaluator on every worker.

Each cell is `gan-pipeline sweep` in a fresh folder (own sqlite store, own local Ray) of 2
trials of the same small space (mnist-5k, an MLP, 3 epochs, every epoch scored), run as

  pbt    --scheduler pbt --perturb-every 1: 3 lives a member
  none   --scheduler none: 1 life a trial (the same epochs, nothing perturbed)

with 1 and with 2 workers per trial, and reads back:

  wall_s       the whole command
  trial_s      the trials' system/wall_s, summed (each member's over all its lives)

and what one more life costs, its training aside: the pbt - none difference over the
extra lives (2 members x 2), of trial_s and of wall_s. Which one measures it depends on
how the trials share this machine's 2 cores. One-worker trials train side by side, each
on its own core: trial_s is the cost (wall_s sees two lives at once). Two-worker trials
need both cores, so they take turns, and a trial's wall time includes waiting for the
other's workers to finish: wall_s is the cost (trial_s counts the waits).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sweep_cell import run_sweep

SPACE = """\
description: bench_member_lives
sweep: {trials: 2, perturb_every: 1}
params:
  dataset: mnist-5k
  arch: mlp
  mlp_width: 16
  latent_dim: 16
  epochs: 3
  eval_every: 1
  eval_samples: 200
  eval_budget: 0
  batch_size: 64
  device: cpu
  lr_g: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
  lr_d: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
"""
TRIALS, EPOCHS = 2, 3


def sweep(folder: Path, scheduler: str, workers: int) -> dict:
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(SPACE)
    wall, runs = run_sweep(folder, ["--space", "space.yaml", "--scheduler", scheduler, "--workers-per-trial",
                                    str(workers)], f"{scheduler} x{workers}")
    assert len(runs) == TRIALS and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    return {"scheduler": scheduler, "workers": workers, "wall_s": round(wall, 1),
            "trial_s": round(sum(r.data.metrics["system/wall_s"] for r in runs), 1),
            "exploits": sum(int(r.data.tags.get("pbt.exploits", 0)) for r in runs)}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-lives-") as tmp:
        for workers in (1, 2):
            for scheduler in ("pbt", "none"):
                rows.append(sweep(Path(tmp) / f"{scheduler}-{workers}", scheduler, workers))
                print(json.dumps(rows[-1]), flush=True)
    extra_lives = TRIALS * (EPOCHS - 1)
    print("\n| workers per trial | pbt: wall s / trials' s | none: wall s / trials' s "
          "| one more life, from trials' s | from wall s |")
    print("|---|---|---|---|---|")
    for workers in (1, 2):
        pbt, none = (next(r for r in rows if r["workers"] == workers and r["scheduler"] == s) for s in ("pbt", "none"))
        by_trials, by_wall = ((pbt[k] - none[k]) / extra_lives for k in ("trial_s", "wall_s"))
        print(f"| {workers} | {pbt['wall_s']:.0f} / {pbt['trial_s']:.0f} | {none['wall_s']:.0f} / "
              f"{none['trial_s']:.0f} | {by_trials:.1f} s | {by_wall:.1f} s |")

if __name__ == "__main__":
    main()
