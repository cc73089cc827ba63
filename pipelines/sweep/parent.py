"""The sweep's parent MLflow run: created with the sweep's settings and space (and the
Tune folder a resume needs), found again by name, and its settings restored for
`--resume`: an unfinished sweep continues in its Tune folder (Tuner.restore); a finished
one given `--trials N` is extended by a new Tune experiment under the same parent."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan.config import ConfigError
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
    save_settings(opts, Path(space.path).read_text())
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


def save_settings(opts: Sweep, space_text: str) -> None:
    """The space as it was at the start and the settings, in the Tune folder: a resumed
    sweep samples the same space with the same settings."""
    opts.folder.mkdir(parents=True, exist_ok=True)
    (opts.folder / "space.yaml").write_text(space_text)
    (opts.folder / "sweep.json").write_text(json.dumps(dataclasses.asdict(opts), indent=2))


def find_parent(client: Any, experiment_id: str, name: str | None) -> Any | None:

    where = f"tags.`{names.SWEEP_ROLE}` = '{PARENT_ROLE}'"
    if name:
        where += f" and tags.`{names.SWEEP_NAME}` = '{name}'"
    if not name:
        where += " and attributes.status != 'FINISHED'"
    runs = client.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None


@dataclass(frozen=True)
class Resumed:
    """A sweep to go on with: its parent run, settings and space; `had` is set for an
    extension (the trials the finished sweep had; it adds opts.trials - had)."""

    parent: Any
    opts: Sweep
    space: SearchSpace
    had: int | None = None


def restore_settings(client: Any, experiment_id: str | None, name: str,
                     given: SweepOptions) -> Resumed:
    """The sweep to continue ('latest': the newest unfinished one) and how. Checks only,
    writes nothing (start_extension writes). ray_address may change between drivers; of
    the rest only --trials, and only to extend a finished sweep (to more trials)."""
    from pipelines.sweep.report import child_runs
    from pipelines.tracking.lease import holder

    parent = find_parent(client, experiment_id, None if name == "latest" else name) if experiment_id else None
    if parent is None:
        what = "no unfinished sweep" if name == "latest" else f"no sweep named {name!r}"
        raise TrackingError(f"--resume: {what} in experiment {given.experiment!r}")
    name = parent.data.tags.get(names.SWEEP_NAME, name)
    held = holder(parent)  # its driver holds the parent's lease while it runs
    if held:
        host, pid = (held[0].split(":") + ["?"])[:2]
        raise TrackingError(f"--resume {name}: the sweep is running (its driver, {host} pid {pid}, beat "
                            f"{held[1]:.0f} s ago): wait for it to end, or stop it")
    exp_dir = Path(parent.data.tags[names.SWEEP_STORAGE])
    opts, space = saved_settings(parent, given.ray_address,
                                 f"--resume: the sweep's Tune state is gone ({exp_dir})")
    if parent.info.status == "FINISHED":
        had = len(child_runs(client, parent.info.experiment_id, parent.info.run_id))
        if given.trials is None:
            raise ConfigError(f"--resume {name}: the sweep is finished ({had} trials); extend it with "
                              f"--resume {name} --trials N, N more than {had}")
        if given.trials <= had:
            raise ConfigError(f"--trials {given.trials} is invalid: sweep {name} already has {had} trials; "
                              f"give more than {had} to extend it")
        return Resumed(parent, dataclasses.replace(opts, trials=given.trials, tune_folder=_next_folder(opts)),
                       space, had)
    if given.trials is not None and given.trials != opts.trials:
        raise ConfigError(f"--trials {given.trials} is invalid with --resume {name}: the sweep is unfinished; "
                          f"continue it with --resume {name} first, then extend it with --trials")
    from ray import tune

    if not tune.Tuner.can_restore(str(exp_dir)):
        raise TrackingError(f"--resume: nothing to restore in {exp_dir} (the sweep never started)")
    return Resumed(parent, opts, space)


def saved_settings(parent: Any, ray_address: str | None, gone: str) -> tuple[Sweep, SearchSpace]:
    """The sweep's settings and space as its driver saved them in its Tune folder, with
    this driver's `ray_address` (the cluster may differ between drivers); a TrackingError
    saying `gone` when the folder does not hold them (another machine, or deleted)."""
    folder = Path(parent.data.tags.get(names.SWEEP_STORAGE, ""))
    try:
        saved = json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        raise TrackingError(gone) from None
    opts = dataclasses.replace(Sweep(**saved), ray_address=ray_address)
    return opts, dataclasses.replace(load_space(folder / "space.yaml"), path=opts.space)


EXTENSION = "{name}-more-{k}"  # the Tune folder of a finished sweep's k-th extension


def _next_folder(opts: Sweep) -> str:
    root = Path(opts.storage_path).expanduser().resolve()
    k = 1
    while (root / EXTENSION.format(name=opts.name, k=k)).exists():
        k += 1
    return EXTENSION.format(name=opts.name, k=k)


def start_extension(client: Any, resumed: Resumed) -> None:
    """Write what an extension needs before its trials start: its Tune folder with the
    sweep's space and the new settings (so an interrupted extension resumes from there),
    the parent's Tune folder moved to it, and the trial counts in `sweep.extended`."""
    parent, opts = resumed.parent, resumed.opts
    old = Path(parent.data.tags[names.SWEEP_STORAGE])
    save_settings(opts, (old / "space.yaml").read_text())
    history = parent.data.tags.get(names.SWEEP_EXTENDED) or str(resumed.had)
    client.set_tag(parent.info.run_id, names.SWEEP_STORAGE, str(opts.folder))
    client.set_tag(parent.info.run_id, names.SWEEP_EXTENDED, f"{history} -> {opts.trials}")


def extensions(parent: Any) -> int:
    """How many times the sweep was extended (0: never): the step of its sweep.* metrics."""
    return parent.data.tags.get(names.SWEEP_EXTENDED, "").count("->")
