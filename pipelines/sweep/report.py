"""The sweep's closing report on its parent MLflow run: a summary table of every trial
(CSV and HTML, with each trial's resource use), Optuna's parameter-importance and
parallel-coordinate plots, and the best trials' sample grids side by side at the same
epoch; each trial renamed to what tells it apart, and every run's description written.

Built from the child runs in MLflow (not Tune's in-memory results), so a resumed sweep
reports the trials of every driver that worked on it.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from pipelines.sweep.naming import differing, number_of, trial_name
from pipelines.sweep.notes import lineage, parent_note, trial_note
from pipelines.sweep.space import SearchSpace
from pipelines.tracking import names
from pipelines.tracking.history import eval_epochs, logged_grids

COMPARE_TOP = 3


def child_runs(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The sweep's trial runs (its confirmation's runs nest under it too: confirm_runs)."""
    return [r for r in _nested(client, experiment_id, parent_run_id) if names.CONFIRM_OF not in r.data.tags]


def confirm_runs(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    """The runs `confirm` trained again with new seeds, nested under the sweep's parent."""
    return [r for r in _nested(client, experiment_id, parent_run_id) if names.CONFIRM_OF in r.data.tags]


def _nested(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    # MLflow's filter cannot ask for a tag's absence: split here.
    return client.search_runs([experiment_id], f"tags.`{names.PARENT_RUN}` = '{parent_run_id}'",
                              max_results=10_000)


def _fid(run: Any, key: str = names.FID) -> float:
    v = run.data.metrics.get(key)
    return float(v) if v is not None and math.isfinite(v) else math.inf


def best_run(runs: list[Any]) -> Any | None:
    """Lowest final FID among FINISHED runs (they hold a model), else among all."""
    finished = [r for r in runs if r.info.status == "FINISHED" and math.isfinite(_fid(r))]
    pool = finished or [r for r in runs if math.isfinite(_fid(r))]
    return min(pool, key=_fid) if pool else None


def sampled_params(run: Any, space: SearchSpace) -> dict[str, Any]:
    """The searched values of a run, typed back from MLflow's strings; inactive
    conditional parameters (e.g. mlp_width of a dcgan trial) are left out."""
    values: dict[str, Any] = {}
    logged = run.data.params
    for p in space.params:
        if p.name not in logged or not p.active(values):
            continue
        text = logged[p.name]
        if p.kind == "float":
            values[p.name] = float(text)
        elif p.kind == "int":
            values[p.name] = int(text)
        else:
            match = [c for c in p.choices if str(c) == text]
            if match:
                values[p.name] = match[0]
    return values


RESOURCES = {names.WALL_S: "wall_s", names.QUEUED_S: "queued_s", names.CPU_HOURS: "cpu_h",
             names.GPU_HOURS: "gpu_h", names.PEAK_MEMORY_MB: "peak_mem_mb"}


def summary_frame(runs: list[Any], space: SearchSpace) -> Any:
    import pandas as pd

    rows = []
    for r in runs:
        m = r.data.metrics
        rows.append({
            "name": r.info.run_name,
            "trial_id": r.data.tags.get(names.TRIAL_ID, ""),
            "run_id": r.info.run_id,
            "status": r.info.status,
            names.STOPPED_REASON: r.data.tags.get(names.STOPPED_REASON, ""),
            names.ERROR: r.data.tags.get(names.ERROR, ""),
            names.FID: m.get(names.FID),
            names.BEST_FID: m.get(names.BEST_FID),
            "epochs_run": int(m[names.EPOCH]) if names.EPOCH in m else 0,
            **sampled_params(r, space),
            # queued_s only where a trial has it (distributed ones): no empty column otherwise
            **{col: m.get(key) for key, col in RESOURCES.items() if key != names.QUEUED_S or key in m},
            "node": r.data.tags.get(names.NODE_ID, "")[:12],
        })
    frame = pd.DataFrame(rows)
    return frame.sort_values(names.BEST_FID, na_position="last").reset_index(drop=True) if rows else frame


def study_from_runs(runs: list[Any], space: SearchSpace) -> Any:
    """A finished Optuna study of the trials with a finite FID (what the plots need)."""
    import optuna

    study = optuna.create_study(direction="minimize")
    dists = space.distributions()
    for r in runs:
        if not math.isfinite(_fid(r)):
            continue
        params = sampled_params(r, space)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=_fid(r)))
    return study


def warm_report_imports() -> threading.Thread:
    """Import what the report draws with (matplotlib, Optuna's plots and importance: about
    3 s here) in the background while the trials run, so the sweep does not wait for it
    after its last trial."""

    def load() -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import optuna.importance  # noqa: F401
        import optuna.visualization.matplotlib  # noqa: F401

    thread = threading.Thread(target=load, name="warm-report-imports", daemon=True)
    thread.start()
    return thread


def log_report(client: Any, parent_run_id: str, runs: list[Any], space: SearchSpace) -> list[Any]:
    """Summary table, plots and comparison image on the parent run; a plot that cannot be
    drawn (too few finished trials) is skipped with a note, never fails the sweep.
    Returns the runs as the report left them (renamed, described)."""
    import matplotlib

    matplotlib.use("Agg")
    runs = name_trials(client, runs, space)
    from pipelines.tracking.store import share_sweep_view

    parent = client.get_run(parent_run_id)
    share_sweep_view(client, parent.info.experiment_id, parent.data.tags.get(names.SWEEP_NAME, ""),
                     [p.name for p in space.params])
    frame = summary_frame(runs, space)
    describe(client, parent_run_id, runs, frame)
    with tempfile.TemporaryDirectory() as tmp:
        csv, html = Path(tmp) / "summary.csv", Path(tmp) / "summary.html"
        frame.to_csv(csv, index=False)
        frame.to_html(html, index=False, na_rep="")
        client.log_artifact(parent_run_id, str(csv), "summary")
        client.log_artifact(parent_run_id, str(html), "summary")
    _log_plots(client, parent_run_id, study_from_runs(runs, space), _objective(runs))
    try:
        _log_comparison(client, parent_run_id, runs)
    except Exception as e:  # noqa: BLE001 - a missing grid must not lose the rest
        print(f"note: no comparison image: {e}", file=sys.stderr)
    return [client.get_run(r.info.run_id) for r in runs]


def name_trials(client: Any, runs: list[Any], space: SearchSpace) -> list[Any]:
    """Rename each trial to its number and the sampled values that differ across trials
    (at most MAX_NAME characters, naming.py); returns the runs as renamed.

    The numbers the trials were given at start are kept when no two share one: the
    console's progress lines named the trials by them. Otherwise (two trials that started
    at once took the same number) every trial is numbered in start order."""
    runs = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    values = {r.info.run_id: sampled_params(r, space) for r in runs}
    keep = differing(list(values.values()))
    given = [number_of(r.info.run_name) for r in runs]
    kept = [n for n in given if n is not None]
    numbers = kept if len(set(kept)) == len(runs) else list(range(1, len(runs) + 1))
    for number, r in zip(numbers, runs, strict=True):
        name = trial_name(number, values[r.info.run_id], keep)
        if name != r.info.run_name:
            client.update_run(r.info.run_id, name=name)
    return [client.get_run(r.info.run_id) for r in runs]


def describe(client: Any, parent_run_id: str, runs: list[Any], frame: Any) -> None:
    """Each trial's description (how it ended, its rank) and the parent's (top trials)."""
    from pipelines.tracking.store import run_url, runs_table_url

    parent = client.get_run(parent_run_id)
    exp = runs[0].info.experiment_id if runs else parent.info.experiment_id
    sweep = parent.data.tags.get(names.SWEEP_NAME, "")
    scored = [row["run_id"] for row in frame.to_dict("records") if row[names.BEST_FID] == row[names.BEST_FID]
              and row[names.BEST_FID] is not None]
    for row in frame.to_dict("records"):
        rank = scored.index(row["run_id"]) + 1 if row["run_id"] in scored else None
        client.set_tag(row["run_id"], names.NOTE,
                       trial_note(row, rank, len(scored), sweep, run_url("", exp, parent_run_id)))
    link = lambda run_id: run_url("", exp, run_id)  # noqa: E731
    client.set_tag(parent_run_id, names.NOTE, parent_note(frame, sweep, runs_table_url("", exp, sweep), link,
                                                          lineage(parent.data.tags, link)))


def _objective(runs: list[Any]) -> str:
    backbone = next((r.data.params.get("backbone") for r in runs if r.data.params.get("backbone")), "?")
    return f"final FID ({backbone} backbone, lower is better)"


def _log_plots(client: Any, run_id: str, study: Any, objective: str) -> None:
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    for name, plot in (("param_importances", ovm.plot_param_importances),
                       ("parallel_coordinate", ovm.plot_parallel_coordinate)):
        try:
            ax = plot(study, target_name=objective)
        except Exception as e:  # noqa: BLE001 - e.g. fewer than 2 finished trials
            client.set_tag(run_id, f"{names.PLOT_PREFIX}{name}", f"skipped: {type(e).__name__}: {e}"[:500])
            continue
        axis: Any = ax[0] if hasattr(ax, "__len__") else ax  # type: ignore[index]
        fig: Any = axis.figure
        axis.set_title(f"{name.replace('_', ' ')}: {objective}")
        fig.set_size_inches(10, 6)
        fig.tight_layout()
        client.log_figure(run_id, fig, f"plots/{name}.png")
        plt.close(fig)


def _log_comparison(client: Any, parent_run_id: str, runs: list[Any]) -> None:
    """The best trials' grids at the latest epoch all of them reached (steps per epoch
    differ with batch size, so epochs are what line up)."""
    import matplotlib.pyplot as plt

    ranked = sorted((r for r in runs if math.isfinite(_fid(r, names.BEST_FID))),
                    key=lambda r: _fid(r, names.BEST_FID))[:COMPARE_TOP]
    if not ranked:
        return
    with tempfile.TemporaryDirectory() as tmp:
        per_run = []
        for r in ranked:
            epochs = eval_epochs(client, r.info.run_id)
            grids = {epochs[s]: g for s, g in logged_grids(client, r.info.run_id, tmp) if s in epochs}
            per_run.append((r, grids))
    common = set.intersection(*(set(g) for _, g in per_run))
    if not common:
        return
    epoch = max(common)
    fig, axes = plt.subplots(1, len(per_run), figsize=(4.5 * len(per_run), 5.2), squeeze=False,
                             layout="constrained")
    for i, (ax, (r, grids)) in enumerate(zip(axes[0], per_run, strict=True), 1):
        epochs = eval_epochs(client, r.info.run_id)
        fid_at = {epochs[m.step]: m.value for m in client.get_metric_history(r.info.run_id, names.FID)
                  if m.step in epochs}
        grid = grids[epoch]
        ax.imshow(grid.squeeze(), cmap="gray" if grid.ndim == 2 or grid.shape[-1] == 1 else None)
        ax.set_title(f"#{i} {r.info.run_name}\n"
                     f"FID {fid_at.get(epoch, math.nan):.2f} at epoch {epoch}", fontsize=10)
        ax.axis("off")
    backbone = ranked[0].data.params.get("backbone", "?")
    fig.suptitle(f"best {len(per_run)} trials by best FID ({backbone} backbone), samples at epoch {epoch}")
    client.log_figure(parent_run_id, fig, f"comparison/best_trials_epoch{epoch}.png")
    plt.close(fig)
