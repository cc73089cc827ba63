"""The sweep's parent MLflow run: created with the sweep's settings and space (and the
Tune folder a resume needs), found again by name, and its settings restored for
`--resume`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pipelines.errors import TrackingError
from pipelines.sweep.options import Sweep, SweepOptions
from pipelines.sweep.space import SearchSpace
from pipelines.sweep.space_file import load_space
from pipelines.tracking import names
from pipelines.tracking.opening import open_run
from pipelines.tracking.store import environment_tags, share_sweep_view

PARENT_ROLE = names.SWEEP_PARENT


def create_parent(client: Any, experiment_id: str, space: SearchSpace,
                   opts: Sweep) -> tuple[str, str]:
    """(run id, experiment id) of the new parent run; under `mlflow run` the project's own
    run becomes the parent (MLproject: never a stray extra run)."""
    from mlflow.entities import Param


    exp_dir = opts.folder
    exp_dir.mkdir(parents=True, exist_ok=True)
    # The space as it was at the start: a resumed sweep samples the same space.
    (exp_dir / "space.yaml").write_text(Path(space.path).read_text())
    (exp_dir / "sweep.json").write_text(json.dumps(dataclasses.asdict(opts), indent=2))
    tags = {**environment_tags(space.fixed.get("dataset", "mnist-5k"), "sweep"),
            names.SWEEP_NAME: opts.name, names.SWEEP_ROLE: PARENT_ROLE, names.SWEEP_STORAGE: str(exp_dir),
            names.RUN_NAME: opts.name}
    run_id, experiment_id = open_run(client, experiment_id, opts.name, tags)
    params = {f"sweep.{k}": v for k, v in dataclasses.asdict(opts).items() if v is not None}
    params.update({f"fixed.{k}": v for k, v in space.fixed.items()})
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.log_artifact(run_id, space.path, "search_space")
    share_sweep_view(client, experiment_id, opts.name, [p.name for p in space.params])  # the printed URL's view
    return run_id, experiment_id


def find_parent(client: Any, experiment_id: str, name: str | None) -> Any | None:

    where = f"tags.`{names.SWEEP_ROLE}` = '{PARENT_ROLE}'"
    if name:
        where += f" and tags.`{names.SWEEP_NAME}` = '{name}'"
    if not name:
        where += " and attributes.status != 'FINISHED'"
    runs = client.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None


def restore_settings(client: Any, experiment_id: str, name: str,
                      given: SweepOptions) -> tuple[Any, Sweep, SearchSpace]:
    """The parent run, options and space of the sweep to continue ('latest': the newest
    unfinished one); ray_address may change between drivers, the rest may not."""

    parent = find_parent(client, experiment_id, None if name == "latest" else name)
    if parent is None:
        what = "no unfinished sweep" if name == "latest" else f"no sweep named {name!r}"
        raise TrackingError(f"--resume: {what} in experiment {given.experiment!r}")
    exp_dir = Path(parent.data.tags[names.SWEEP_STORAGE])
    try:
        saved = json.loads((exp_dir / "sweep.json").read_text())
    except OSError:
        raise TrackingError(f"--resume: the sweep's Tune state is gone ({exp_dir})") from None
    from ray import tune

    if not tune.Tuner.can_restore(str(exp_dir)):
        raise TrackingError(f"--resume: nothing to restore in {exp_dir} (the sweep never started)")
    opts = dataclasses.replace(Sweep(**saved), ray_address=given.ray_address)
    space = load_space(exp_dir / "space.yaml")
    space = dataclasses.replace(space, path=opts.space)
    return parent, opts, space
