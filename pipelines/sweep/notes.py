"""The sweep's words on its runs' pages (the `mlflow.note.content` description, markdown):
each trial says how it ended and why; the parent lists the top trials as a table and
says where to click next. Written by the report from its summary table."""

from __future__ import annotations

import math
from typing import Any

from pipelines.sweep.tune_report import STOPPED_BY_DRIVER
from pipelines.tracking import names

TOP = 5


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) and math.isfinite(v) else "-"


def ending(status: str, reason: str, error: str, epochs: int) -> str:
    """How a trial ended and why, in one sentence."""
    if reason.startswith("lost:"):
        return f"Lost: {reason[len('lost:'):].strip()}."
    if status == "FINISHED":
        return f"Finished: trained its whole budget ({epochs} epochs) and kept its best and final generators."
    if status == "KILLED" and reason.startswith("tune:"):
        return (f"Pruned after epoch {epochs} (KILLED is how MLflow shows it; not a failure): "
                f"{reason[len('tune:'):].strip()}. Its metrics, grids and best generator so far are kept.")
    if status == "KILLED" and reason.startswith(STOPPED_BY_DRIVER):
        return (f"Stopped after epoch {epochs} (KILLED is how MLflow shows it; not a failure, not pruned): "
                f"{reason[len(STOPPED_BY_DRIVER):].strip()}. Its metrics, grids and best generator so far are kept.")
    if reason.startswith("health:"):
        return f"Failed: the GAN diverged, {reason[len('health:'):].strip()}. Promote never picks it."
    if status == "FAILED":
        return f"Failed: crashed with `{error[:300] or 'an error'}`."
    return f"{status}: {reason or error or 'no reason recorded'}."


def trial_note(row: dict[str, Any], rank: int | None, total: int, sweep: str, parent_url: str) -> str:
    """The markdown description of one trial's run, from its summary-table row."""
    lines = [f"**{row['name']}** (Tune trial `{row['trial_id']}`) of sweep [{sweep}]({parent_url})", "",
             ending(row["status"], row.get(names.STOPPED_REASON, ""), row.get(names.ERROR, ""),
                    int(row["epochs_run"]))]
    if rank is not None:
        lines.append(f"Best FID {_fmt(row[names.BEST_FID])} (last {_fmt(row[names.FID])}): "
                     f"**#{rank} of {total}** trials with a score.")
    lines += ["", f"Samples: Artifacts -> `{names.GRIDS_DIR}/epoch_NNN.png` (same names in every trial: "
              "select two trials and Compare to see them side by side) and `progress.gif`; "
              "charts: plot `fid` against `kimg` to compare at equal training."]
    return "\n".join(lines)


def lineage(tags: dict[str, str], run_url: Any) -> list[str]:
    """What the sweep's searcher started from (seeding.py), from the parent's tags: the
    sweep a warm start was seeded with, and the trial counts of each extension."""
    lines = []
    source = tags.get(names.SWEEP_SEEDED_FROM)
    if source:
        lines.append(f"Warm-started: its searcher began with the {tags.get(names.SWEEP_SEEDED_TRIALS, '?')} "
                     f"scored trials of sweep [{source}]({run_url(tags.get(names.SWEEP_SEEDED_FROM_RUN, ''))}) "
                     f"(`--warm-start {source}`).")
    extended = tags.get(names.SWEEP_EXTENDED)
    if extended:
        lines.append(f"Extended (trials {extended}, `--resume NAME --trials N`): each extension's searcher "
                     "went on from every trial scored before it.")
    return lines


def parent_note(frame: Any, sweep: str, trials_url: str, run_url: Any, origin: list[str] | None = None) -> str:
    """The markdown description of the parent run: the top trials and where to click next.
    `run_url(run_id)` links a trial's page; `origin`: lines on what seeded its searcher."""
    scored = frame[frame[names.BEST_FID].notna()].head(TOP)
    lines = [f"**Sweep {sweep}**: {len(frame)} trials, {int((frame['status'] == 'FINISHED').sum())} finished.",
             *(["", *origin] if origin else []),
             "", "| # | trial | best FID | last FID | status | epochs |", "|---|---|---|---|---|---|"]
    for i, row in enumerate(scored.to_dict("records"), 1):
        lines.append(f"| {i} | [{row['name']}]({run_url(row['run_id'])}) | {_fmt(row[names.BEST_FID])} | "
                     f"{_fmt(row[names.FID])} | {row['status']} | {row['epochs_run']} |")
    lines += ["", "Where next:",
              f"- [all trials, best first]({trials_url}): tick the top two and **Compare**, then "
              f"Artifacts -> `{names.GRIDS_DIR}/epoch_NNN.png` for their samples at the same epoch",
              "- this run's Artifacts: `comparison/` (best trials' samples side by side), "
              "`summary/summary.html` (every trial, with its resource use), `plots/`",
              f"- register the best: `gan-pipeline promote --sweep {sweep}`, then the Models page "
              "shows the `champion` alias"]
    return "\n".join(lines)
