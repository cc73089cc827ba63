"""`gan-pipeline promote`: the best finished run's generator into the Model Registry.

Promotion picks runs by the BEST value in each run's metric history (MLflow's
`metrics.*` is the last value), registers the generator (the EMA copy when the run had
one: that is what the run logged), tags the version with where it came from, and moves
the alias `champion` only to a strictly better model on the same dataset and backbone,
unless forced. Every decision stays visible as version tags.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass
from typing import Any

from pipelines.errors import TrackingError
from pipelines.tracking import names
from pipelines.tracking.names import CHAMPION

DEFAULT_MODEL_NAME = "gan-generator"
HIGHER_IS_BETTER = ("precision", "recall", "density", "coverage", "inception_score")


def better(metric: str, a: float, b: float) -> bool:
    """Is value a strictly better than b for this metric?"""
    return a > b if metric in HIGHER_IS_BETTER else a < b


@dataclass
class Candidate:
    run: Any
    value: float

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


@dataclass
class Promotion:
    model_name: str
    version: str
    candidate: Candidate
    champion_moved: bool
    reason: str

    def line(self, metric: str) -> str:
        c = self.candidate
        return (f"registered {self.model_name} v{self.version} from run {c.run_id} "
                f"({metric} {c.value:.4g}); {self.reason}")


def find_sweep(client: Any, sweep: str) -> Any:
    """The sweep's parent run, by run id, by its sweep_name tag, or by run name."""
    try:
        return client.get_run(sweep)
    except Exception:  # noqa: BLE001, S110 - not a run id; try names next
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    for query in (f"tags.{names.SWEEP_NAME} = '{sweep}'", f"attributes.run_name = '{sweep}'"):
        runs = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
        runs = [r for r in runs if names.PARENT_RUN not in r.data.tags]
        if runs:
            return runs[0]
    raise TrackingError(f"--sweep {sweep!r}: no sweep parent run with that id, sweep_name tag or run name")


def candidates(client: Any, metric: str, *, sweep: str | None, experiment: str | None,
               min_epochs: int = 0) -> tuple[list[Candidate], str]:
    """Finished runs with a generator and the metric, best first; and the sweep's name."""
    if sweep:
        parent = find_sweep(client, sweep)
        experiment_ids = [parent.info.experiment_id]
        query = f"tags.`{names.PARENT_RUN}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'"
        sweep_name = parent.data.tags.get(names.SWEEP_NAME, parent.info.run_name)
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"--experiment {experiment!r}: no such experiment in this store")
        experiment_ids, query, sweep_name = [exp.experiment_id], "attributes.status = 'FINISHED'", ""
    runs = client.search_runs(experiment_ids, query, max_results=5000)
    if not runs:
        raise TrackingError(f"no finished run to promote in {'sweep ' + sweep if sweep else experiment!r}")
    found = []
    for run in runs:
        if run.data.metrics.get(names.EPOCH, 0) < min_epochs:
            continue
        history = [m.value for m in client.get_metric_history(run.info.run_id, metric) if math.isfinite(m.value)]
        if history:
            best = max(history) if metric in HIGHER_IS_BETTER else min(history)
            found.append(Candidate(run, best))
    if not found:
        raise TrackingError(
            f"no finished run has metric {metric!r}"
            + (f" with at least {min_epochs} epochs" if min_epochs else "")
            + ": pick a logged metric such as fid, kid or precision"
        )
    found.sort(key=lambda c: -c.value if metric in HIGHER_IS_BETTER else c.value)
    return found, sweep_name


def _existing_version(client: Any, name: str, run_id: str) -> Any | None:
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except Exception:  # noqa: BLE001 - the registered model does not exist yet
        return None
    return versions[0] if versions else None


def _current_champion(client: Any, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - no registered model or no alias yet
        return None


def promote(client: Any, *, sweep: str | None = None, experiment: str | None = None, metric: str = names.FID,
            model_name: str = DEFAULT_MODEL_NAME, min_epochs: int = 0, force: bool = False) -> Promotion:
    """Register the best run's generator and move `champion` if it is strictly better."""
    import mlflow

    found, sweep_name = candidates(client, metric, sweep=sweep, experiment=experiment, min_epochs=min_epochs)
    best = found[0]
    params = best.run.data.params
    dataset, backbone = params.get(names.DATASET, ""), params.get("backbone", "")
    version = _existing_version(client, model_name, best.run_id)
    if version is None:
        mlflow.set_tracking_uri(client.tracking_uri)
        # register_model prints its own progress lines; promote's answer is one line.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            version = mlflow.register_model(f"runs:/{best.run_id}/{names.GENERATOR_DIR}", model_name,
                                            await_registration_for=60)
    tags = {names.VERSION_METRIC: metric, names.VERSION_METRIC_VALUE: repr(best.value),
            names.VERSION_DATASET: dataset, names.VERSION_BACKBONE: backbone,
            names.VERSION_SWEEP: sweep_name, names.VERSION_SOURCE_RUN: best.run_id}
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version.version, k, v)

    current = _current_champion(client, model_name)
    if force:
        moved, reason = True, "champion moved (forced)"
    elif current is None:
        moved, reason = True, "champion set (there was none)"
    elif current.version == version.version:
        moved, reason = False, f"it is already the champion (v{current.version})"
    else:
        ct = current.tags
        was = (ct.get(names.VERSION_DATASET), ct.get(names.VERSION_BACKBONE), ct.get(names.VERSION_METRIC))
        comparable = was == (dataset, backbone, metric)
        if not comparable:
            moved = False
            reason = (f"champion stays v{current.version}: it was scored on {'/'.join(map(str, was))}, "
                      f"not {dataset}/{backbone}/{metric} (use --force)")
        elif better(metric, best.value, float(ct[names.VERSION_METRIC_VALUE])):
            moved = True
            reason = f"champion moved from v{current.version} ({metric} {float(ct[names.VERSION_METRIC_VALUE]):.4g})"
        else:
            moved = False
            reason = (f"champion stays v{current.version}: its {metric} {float(ct[names.VERSION_METRIC_VALUE]):.4g} "
                      "is as good or better")
    if moved:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(model_name, version.version, names.VERSION_PROMOTION, f"{stamp} {reason}")
    return Promotion(model_name, version.version, best, moved, reason)
