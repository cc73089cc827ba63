"""The family tree of a population sweep on its parent run: a lineage plot (members over
epochs, an arrow for each exploit from the member copied to the member that copied it,
the best member's ancestry drawn bold), a table of each member's hyperparameter schedule
(pbt/schedules.html and .csv), and a section first in the parent's and each member's
description. Built from the members' runs (sweep.member wrote their exploits)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from pipelines.sweep.population import mutable_params
from pipelines.sweep.space import SearchSpace
from pipelines.tracking import names
from pipelines.tracking.exploits import Stretch, ancestry, describe_ancestry, exploits


def short(run: Any) -> str:
    """A member by its number (`t04`): its full name shows the values it started with,
    which an exploit may have replaced."""
    return str(run.info.run_name).split(" ")[0]


def _last(run: Any, key: str, default: float = math.nan) -> float:
    return float(run.data.metrics.get(key, default))


def schedules(client: Any, runs: list[Any], keys: list[str]) -> list[dict[str, Any]]:
    """One row per stretch of each member between exploits: its epochs, where its weights
    came from, and the values it trained with (the run's pbt/<param> metrics)."""
    rows = []
    events = {r.info.run_id: exploits(client, r.info.run_id) for r in runs}
    name_of = {r.info.run_id: short(r) for r in runs}
    for r in runs:
        first = {k: _first_value(client, r.info.run_id, k) for k in keys}
        end = int(_last(r, names.EPOCH, 0))
        starts = [(0, "its own start", first)]
        for e in events[r.info.run_id]:
            values = json.loads(e["values"])
            starts.append((int(e["epoch"]), f"copied {name_of.get(e['from_run_id'], e['from_run_id'])}",
                           {k: values.get(k) for k in keys}))
        for i, (start, source, values) in enumerate(starts):
            stop = starts[i + 1][0] if i + 1 < len(starts) else end
            rows.append({"member": short(r), "epochs": f"{start}-{stop}", "weights from": source,
                         **values, "final FID": _last(r, names.FID) if i == len(starts) - 1 else None,
                         "run_id": r.info.run_id})
    return rows


def _first_value(client: Any, run_id: str, key: str) -> float | None:
    history = client.get_metric_history(run_id, f"{names.PBT_VALUE_PREFIX}{key}")
    return min(history, key=lambda m: m.step).value if history else None


def log_family(client: Any, parent_run_id: str, runs: list[Any], space: SearchSpace, scheduler: str) -> None:
    """The lineage plot, the schedules and the descriptions' population sections."""
    import pandas as pd

    keys = [p.name for p in mutable_params(space)]
    events = {r.info.run_id: exploits(client, r.info.run_id) for r in runs}
    name_of = {r.info.run_id: short(r) for r in runs}
    scored = [r for r in runs if math.isfinite(_last(r, names.FID, math.inf))]
    best = min(scored, key=lambda r: _last(r, names.FID)) if scored else None
    line = ancestry(client, best.info.run_id, int(_last(best, names.EPOCH, 0)), events) if best else []
    frame = pd.DataFrame(schedules(client, runs, keys))
    with tempfile.TemporaryDirectory(prefix="gan-family-") as tmp:
        html, csv = Path(tmp) / "schedules.html", Path(tmp) / "schedules.csv"
        frame.drop(columns="run_id").to_html(html, index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
        frame.to_csv(csv, index=False)
        client.log_artifact(parent_run_id, str(html), "pbt")
        client.log_artifact(parent_run_id, str(csv), "pbt")
    _plot(client, parent_run_id, runs, events, line, scheduler)
    count = sum(len(v) for v in events.values())
    epochs = sorted({int(e["epoch"]) for v in events.values() for e in v})
    section = [f"**Population ({scheduler})**: {len(runs)} members, {count} exploits"
               + (f" at epochs {', '.join(map(str, epochs))}" if epochs else "") + "."]
    if line:
        section.append(f"The best member's weights: {describe_ancestry(line, lambda i: name_of.get(i, i))}.")
    section.append(f"Family tree: artifact `{names.PBT_LINEAGE_FILE}`; each member's schedule: "
                   f"`{names.PBT_SCHEDULES_FILE}`.")
    _prepend_note(client, parent_run_id, "\n\n".join(section))
    for r in runs:
        rows = events[r.info.run_id]
        if rows:
            _prepend_note(client, r.info.run_id, "**Exploits** (population-based training):\n\n" + "\n".join(
                f"- epoch {e['epoch']}: copied {name_of.get(e['from_run_id'], e['from_run_id'])}; {e['changes']}"
                for e in rows))


def _prepend_note(client: Any, run_id: str, text: str) -> None:
    """First in the description: the UI shows its first lines, the rest behind "Show more"."""
    note = client.get_run(run_id).data.tags.get(names.NOTE, "")
    client.set_tag(run_id, names.NOTE, f"{text}\n\n{note}" if note else text)


def _plot(client: Any, parent_run_id: str, runs: list[Any], events: dict[str, list[dict[str, Any]]],
          line: list[Stretch], scheduler: str) -> None:
    import matplotlib.pyplot as plt

    order = sorted(runs, key=short)
    row = {r.info.run_id: i for i, r in enumerate(order)}
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.45 * len(order)), layout="constrained")
    for r in order:
        y, end = row[r.info.run_id], _last(r, names.EPOCH, 0)
        ax.hlines(y, 0, end, color="0.6", lw=2)
        fid = _last(r, names.FID)
        ax.text(end + 0.05, y, f" FID {fid:.1f}" if math.isfinite(fid) else f" {r.info.status}", va="center",
                fontsize=8)
        for e in events[r.info.run_id]:
            donor = row.get(e["from_run_id"])
            if donor is not None:
                ax.annotate("", xy=(e["epoch"], y), xytext=(e["epoch"], donor),
                            arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 1,
                                        "connectionstyle": "arc3,rad=0.25"})
    for s in line:  # the best member's ancestry, bold
        if s.run_id in row:
            ax.hlines(row[s.run_id], s.start, s.end, color="tab:blue", lw=5)
    from matplotlib.ticker import MaxNLocator

    ax.set_yticks(range(len(order)), [short(r) for r in order], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_title(f"{scheduler.upper()} family tree of {len(order)} members: a red arrow copies a member's "
                 "checkpoint (donor -> copier);\nblue: where the best member's weights were trained", fontsize=9)
    client.log_figure(parent_run_id, fig, names.PBT_LINEAGE_FILE)
    plt.close(fig)
