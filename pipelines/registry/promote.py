"""`gan-pipeline promote`: the best generator into the Model Registry.

Candidates are LoggedModels (pipelines.tracking.models), each ranked by the value of
`--metric` logged for that very model, so the version registered is exactly the model
that earned the number on its tags. Only models of FINISHED runs compete (never a sweep
parent, a pruned, diverged or failed run), and only comparable ones: a score depends on
the dataset, image size, backbone and sample count, and an experiment that mixes them
is an error naming the filter to add. The alias `champion` moves only to a strictly
better comparable model, unless forced; every decision stays visible as version tags.
The line promote prints carries the model's copy check (gan.metrics.copies), and
`max_copy` refuses, registering nothing, a model whose copy_share is above it.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipelines.errors import TrackingError
from pipelines.registry.champion_rule import ALPHA, HIGHER_IS_BETTER, Spread, decide, pooled
from pipelines.registry.lookup import champion_version, is_not_found
from pipelines.tracking import names
from pipelines.tracking.exploits import version_lineage
from pipelines.tracking.models import COMPARABLE
from pipelines.tracking.names import CHAMPION
from pipelines.tracking.store import global_tracking_uri
from pipelines.tracking.sweeps import PARENT_ROLE, find_sweep

DEFAULT_MODEL_NAME = "gan-generator"
# Held-out real digits score ~0.45 (the share an honest generator's samples land that near
# by chance), trained DCGANs 0.12-0.13, a verbatim copier 1.0 (benchmarks/RESULTS.md 21):
# above 3/4 the samples sit on training images far more often than unseen data does.
COPIER_SHARE = 0.75


def better(metric: str, a: float, b: float) -> bool:
    """Is value a strictly better than b for this metric?"""
    return a > b if metric in HIGHER_IS_BETTER else a < b


@dataclass
class Candidate:
    model: Any  # a LoggedModel
    run: Any  # its source run
    value: float

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)

    @property
    def model_id(self) -> str:
        return str(self.model.model_id)

    @property
    def copy_share(self) -> float | None:
        """The model's copy check; None for a model scored before there was one."""
        values = [m.value for m in (self.model.metrics or []) if m.key == names.COPY_SHARE]
        return values[-1] if values else None

    @property
    def kind(self) -> tuple[str, ...]:
        """What the score depends on besides the generator (see tracking.models.COMPARABLE)."""
        return tuple(self.model.tags.get(k, "") for k in COMPARABLE)


@dataclass
class Promotion:
    model_name: str
    version: str
    candidate: Candidate
    champion_moved: bool
    reason: str
    spread: Spread | None = None  # the config's mean over seeds, when the sweep was confirmed

    def line(self, metric: str) -> str:
        c = self.candidate
        s = self.spread
        spread = f" +- {s.std:.2g}" if s and math.isfinite(s.std) else ""
        ranked = (f"ranked by its config's mean over {s.n} confirmation seed{'s' if s.n > 1 else ''}, "
                  f"{metric} {s.mean:.4g}{spread}; ") if s else ""
        return (f"registered {self.model_name} v{self.version} = model {c.model_id} (run {c.run_id}, "
                f"{metric} {c.value:.4g}); {ranked}{self.reason}; {copies_phrase(c)}")


def copies_phrase(c: Candidate) -> str:
    """What the model's copy check says, in words, with the flag a copier gets."""
    share = c.copy_share
    if share is None:
        return "copies: not checked (scored before the copy check)"
    flag = " (looks like a copier)" if share > COPIER_SHARE else ""
    panel = c.model.tags.get(names.MODEL_COPY_PANEL)
    where = f", panel {panel} in run {c.run_id}" if panel else ""
    return (f"copies: {share:.0%} of its samples are closer to a training image than training images "
            f"are to each other{flag}{where}")


def check_copies(c: Candidate, max_copy: float) -> None:
    """TrackingError (nothing registered) when the model copies more than `max_copy` allows."""
    share = c.copy_share
    if share is None:
        raise TrackingError(f"--max-copy {max_copy:g}: model {c.model_id} (run {c.run_id}) has no copy_share "
                            "(scored before the copy check); nothing registered: promote it without --max-copy")
    if share > max_copy:
        raise TrackingError(f"--max-copy {max_copy:g}: model {c.model_id} (run {c.run_id}) copies {share:.0%} of "
                            f"its samples (copy_share {share:.3g} > {max_copy:g}); nothing registered")


def _finished_runs(client: Any, sweep: str | None, experiment: str | None) -> tuple[list[Any], str, str]:
    """(FINISHED runs that may hold models, the sweep's name, where they came from)."""
    if sweep:
        parent = find_sweep(client, sweep)
        experiment_ids = [parent.info.experiment_id]
        query = f"tags.`{names.PARENT_RUN}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'"
        sweep_name = parent.data.tags.get(names.SWEEP_NAME, parent.info.run_name)
        where = f"sweep {sweep}"
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise TrackingError(f"--experiment {experiment!r}: no such experiment in this store")
        experiment_ids, query, sweep_name = [exp.experiment_id], "attributes.status = 'FINISHED'", ""
        where = f"experiment {experiment!r}"
    runs = client.search_runs(experiment_ids, query, max_results=5000)
    runs = [r for r in runs if r.data.tags.get(names.SWEEP_ROLE) != PARENT_ROLE]
    if not runs:
        raise TrackingError(f"no finished run to promote in {where}")
    return runs, sweep_name, where


def candidates(client: Any, metric: str, *, sweep: str | None, experiment: str | None,
               min_epochs: int = 0, where: dict[str, str] | None = None) -> tuple[list[Candidate], str]:
    """Comparable models of finished runs with a finite `metric`, best first; the sweep's name.

    `where` filters on the comparable tags (dataset, image_size, backbone, eval_samples)."""
    runs, sweep_name, origin = _finished_runs(client, sweep, experiment)
    by_id = {r.info.run_id: r for r in runs if r.data.metrics.get(names.EPOCH, 0) >= min_epochs}
    experiment_ids = sorted({r.info.experiment_id for r in by_id.values()})
    models = _models(client, experiment_ids) if by_id else []
    found = []
    for m in models:
        run = by_id.get(m.source_run_id)
        if run is None or any(m.tags.get(k) != v for k, v in (where or {}).items()):
            continue
        values = [x.value for x in (m.metrics or []) if x.key == metric and math.isfinite(x.value)]
        if values:
            found.append(Candidate(m, run, values[-1]))
    if not found:
        raise TrackingError(
            f"no model of a finished run in {origin} has metric {metric!r}"
            + (f" with at least {min_epochs} epochs" if min_epochs else "")
            + (" and " + ", ".join(f"{k}={v}" for k, v in where.items()) if where else "")
            + ": pick a logged metric such as fid, kid or precision"
        )
    kinds = Counter(c.kind for c in found)
    if len(kinds) > 1:
        raise TrackingError(_mixed_message(origin, kinds))
    found.sort(key=lambda c: -c.value if metric in HIGHER_IS_BETTER else c.value)
    return found, sweep_name


def _models(client: Any, experiment_ids: list[str]) -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_logged_models(
            experiment_ids, filter_string=f"model_type = '{names.MODEL_TYPE}'", max_results=1000, page_token=token)
        out += [m for m in page if str(m.status).endswith("READY")]
        token = page.token
        if not token:
            return out


def _mixed_message(origin: str, kinds: Counter) -> str:
    differ = [k for i, k in enumerate(COMPARABLE) if len({kind[i] for kind in kinds}) > 1]
    groups = "; ".join(", ".join(f"{k}={v}" for k, v in zip(COMPARABLE, kind, strict=True) if k in differ)
                       + f" ({n} model{'s' if n > 1 else ''})" for kind, n in kinds.most_common(4))
    flags = " ".join(f"--{k.replace('_', '-')} VALUE" for k in differ)
    return f"{origin} mixes scores that cannot be compared: {groups}; pick one with {flags}"


def _existing_version(client: Any, name: str, model_id: str) -> Any | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as e:  # noqa: BLE001 - only "no such registered model" means none
        if is_not_found(e):
            return None
        raise
    for v in versions:
        if v.source == f"models:/{model_id}" or v.tags.get(names.VERSION_MODEL_ID) == model_id:
            return v
    return None


def promote(client: Any, *, sweep: str | None = None, experiment: str | None = None, metric: str = names.FID,
            model_name: str = DEFAULT_MODEL_NAME, min_epochs: int = 0, force: bool = False,
            where: dict[str, str] | None = None, max_copy: float | None = None) -> Promotion:
    """Register the best model and move `champion` to it if it is strictly better;
    with `max_copy`, refuse (registering nothing) a best model that copies more."""
    import mlflow

    found, sweep_name = candidates(client, metric, sweep=sweep, experiment=experiment,
                                   min_epochs=min_epochs, where=where)
    # A sweep's confirmation ranks its configs; across an experiment, every run is its own.
    best, spread = (confirmed_best(found, metric) if sweep else None) or (found[0], None)
    if max_copy is not None:
        check_copies(best, max_copy)
    version = _existing_version(client, model_name, best.model_id)
    if version is None:
        # register_model prints its own progress lines; promote's answer is one line. It and
        # the sqlite registry (a version's models:/ source) read MLflow's global URI.
        with global_tracking_uri(client.tracking_uri), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            version = mlflow.register_model(f"models:/{best.model_id}", model_name, await_registration_for=60)
    tags = {names.VERSION_METRIC: metric, names.VERSION_METRIC_VALUE: repr(best.value),
            names.VERSION_SWEEP: sweep_name, names.VERSION_SOURCE_RUN: best.run_id,
            names.VERSION_MODEL_ID: best.model_id, **dict(zip(COMPARABLE, best.kind, strict=True)),
            **(spread.tags() if spread else {}),
            **({names.COPY_SHARE: repr(best.copy_share)} if best.copy_share is not None else {})}
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version.version, k, v)

    description = version_lineage(client, best.run, best.model)
    if description:
        client.update_model_version(model_name, version.version, description=description)
    moved, reason = _decide(client, model_name, version, best, metric, force, spread)
    if moved:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(model_name, version.version, names.VERSION_PROMOTION, f"{stamp} {reason}")
    return Promotion(model_name, version.version, best, moved, reason, spread)


def confirmed_best(found: list[Candidate], metric: str) -> tuple[Candidate, Spread] | None:
    """When the sweep was confirmed (`confirm`: runs tagged confirm_of): its configs ranked
    by their mean over the confirmation seeds only (each confirming run's best model is its
    seed's score; the trial's own score is left out: it was picked for being the best, and
    is biased), and the best model of the best config (its trial's or a confirming run's)
    with that config's spread and the noise pooled over every confirmed config; None
    otherwise."""
    by_config: dict[str, dict[str, Candidate]] = {}
    confirming: dict[str, dict[str, Candidate]] = {}
    for c in found:  # best first: a run's first candidate is its best model
        of = c.run.data.tags.get(names.CONFIRM_OF)
        by_config.setdefault(of or c.run_id, {}).setdefault(c.run_id, c)
        if of:
            confirming.setdefault(of, {}).setdefault(c.run_id, c)
    if not confirming:
        return None
    spreads = {k: Spread.of([c.value for c in runs.values()]) for k, runs in confirming.items()}
    noise = pooled(spreads.values())
    sign = -1 if metric in HIGHER_IS_BETTER else 1
    config = min(spreads, key=lambda k: sign * spreads[k].mean)
    best = next(iter(by_config[config].values()))
    return best, Spread.of([c.value for c in confirming[config].values()], noise)


def _decide(client: Any, model_name: str, version: Any, best: Candidate, metric: str,
            force: bool, spread: Spread | None = None) -> tuple[bool, str]:
    """(move champion?, why) against the current champion. A confirmed challenger
    (`spread`) must beat it beyond chance (registry.champion_rule: a champion promoted from
    one run is a mean of one with the noise the confirmations measured)."""
    current = champion_version(client, model_name)
    if force:
        return True, "champion moved (forced)"
    if current is None:
        return True, "champion set (there was none)"
    if current.version == version.version:
        return False, f"it is already the champion (v{current.version})"
    ct = current.tags
    was = (*(ct.get(k, "") for k in COMPARABLE), ct.get(names.VERSION_METRIC, ""))
    now = (*best.kind, metric)
    if was != now:
        return False, (f"champion stays v{current.version}: it was scored on {'/'.join(was)}, "
                       f"not {'/'.join(now)} (use --force)")
    theirs = float(ct[names.VERSION_METRIC_VALUE])
    if spread is not None:
        held = Spread.from_tags(ct) or Spread.single(theirs)
        verdict = decide(metric, spread, held)
        versus = f"mean {metric} {spread.mean:.4g} vs its {held.mean:.4g} (over {held.n} seed{'s' * (held.n > 1)})"
        if verdict.moves is None:
            return False, (f"champion stays v{current.version}: {versus}, and the noise of one seed's score is "
                           "unknown (no confirmed config has two seeds): confirm with --seeds 2 or more, or --force")
        if verdict.moves:
            return True, (f"champion moved from v{current.version}: {versus}, better by {verdict.gain:.3g}, beyond "
                          f"chance (more than {verdict.margin:.3g}, a one-sided t-test at {ALPHA:.0%}, "
                          f"{verdict.df} df)")
        return False, (f"champion stays v{current.version}: {versus}, better by {verdict.gain:.3g}, within "
                       f"chance (needs more than {verdict.margin:.3g}, a one-sided t-test at {ALPHA:.0%}, "
                       f"{verdict.df} df)")
    if better(metric, best.value, theirs):
        return True, f"champion moved from v{current.version} ({metric} {theirs:.4g})"
    return False, f"champion stays v{current.version}: its {metric} {theirs:.4g} is as good or better"
