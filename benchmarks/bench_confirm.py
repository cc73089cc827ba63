"""What `gan-pipeline confirm` changes: after a sweep of the shipped `quick` space, is its
single-seed winner still the winner once its top configs are trained again with new seeds?

    python benchmarks/bench_confirm.py --sweeps 3 --top 2 --seeds 2   # ~10 min a sweep on 2 cores

For each sweep seed s (0, 1, ...): `gan-pipeline sweep --space quick --seed s` in a fresh
folder (fresh store, fresh Ray), then `gan-pipeline confirm --sweep NAME --top T --seeds S`,
then reads from the store: the single-seed winner (lowest best_fid among finished trials),
the confirmed winner (lowest confirm.best_fid_mean), and each confirmed config's mean +- std.
Prints one line per sweep and a JSON summary (--json FILE keeps it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_cli(folder: Path, *args: str) -> float:
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=folder, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started


def one_sweep(seed: int, top: int, seeds: int) -> dict:
    from pipelines.sweep.confirm import ranked_trials
    from pipelines.sweep.report import child_runs
    from pipelines.tracking import names
    from pipelines.tracking.store import client_for

    with tempfile.TemporaryDirectory(prefix="bench-confirm-") as tmp:
        folder = Path(tmp)
        name = f"quick-{seed}"
        swept = run_cli(folder, "sweep", "--space", "quick", "--seed", str(seed), "--name", name)
        confirmed = run_cli(folder, "confirm", "--sweep", name, "--top", str(top), "--seeds", str(seeds))
        client = client_for(f"sqlite:///{folder / 'mlflow.db'}")
        parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    f"tags.`{names.SWEEP_NAME}` = '{name}' and tags.`{names.SWEEP_ROLE}` = 'parent'")[0]
        single = ranked_trials(client, parent)
        trials = {r.info.run_id: r for r in child_runs(client, parent.info.experiment_id, parent.info.run_id)}
        rows = []
        for r in single[:top]:
            m = trials[r.info.run_id].data.metrics
            rows.append({"trial": r.info.run_name, "single_seed": r.data.metrics[names.BEST_FID],
                         "mean": m.get("confirm.best_fid_mean", math.nan),
                         "std": m.get("confirm.best_fid_std", math.nan),
                         "n": int(m.get("confirm.n", 0))})
        by_mean = sorted(rows, key=lambda row: row["mean"])
        return {"seed": seed, "sweep_s": round(swept), "confirm_s": round(confirmed),
                "single_seed_winner": rows[0]["trial"], "confirmed_winner": by_mean[0]["trial"],
                "holds": rows[0]["trial"] == by_mean[0]["trial"], "configs": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweeps", type=int, default=3)
    ap.add_argument("--top", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = []
    for seed in range(args.sweeps):
        r = one_sweep(seed, args.top, args.seeds)
        results.append(r)
        configs = "; ".join(f"{c['trial']}: single {c['single_seed']:.2f}, mean {c['mean']:.2f} +- {c['std']:.2f} "
                            f"(n={c['n']})" for c in r["configs"])
        print(f"sweep seed {seed} ({r['sweep_s']} s + confirm {r['confirm_s']} s): winner "
              f"{'holds' if r['holds'] else 'changes'}; {configs}", flush=True)
    held = sum(r["holds"] for r in results)
    print(f"the single-seed winner held in {held} of {len(results)} sweeps")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
