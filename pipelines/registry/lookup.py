"""Finding things in the registry and the store without mistaking an outage for "none":
only MLflow's own not-found answers mean not found; anything else (a refused
connection, a 500) propagates."""

from __future__ import annotations

from typing import Any

from pipelines.tracking.names import CHAMPION
from pipelines.tracking.store import is_not_found


def champion_version(client: Any, name: str) -> Any | None:
    """The version the alias `champion` points at; None only when there is none."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception as e:
        if is_not_found(e):
            return None
        raise


def resolve_model(client: Any, uri: str) -> tuple[Any | None, Any | None]:
    """(LoggedModel or None, source run or None) behind a model URI: models:/NAME@alias,
    models:/NAME/VERSION, models:/m-ID, runs:/RUN_ID/PATH. (None, None) when the URI names
    nothing this store knows; loading it then gives the user the precise error."""
    model_id, run_id = None, None
    try:
        if uri.startswith("models:/"):
            ref = uri[len("models:/"):].strip("/")
            if ref.startswith("m-") and "/" not in ref and "@" not in ref:
                model_id = ref
            else:
                if "@" in ref:
                    name, alias = ref.split("@", 1)
                    version = client.get_model_version_by_alias(name, alias)
                else:
                    name, _, number = ref.partition("/")
                    version = client.get_model_version(name, number)
                run_id = version.run_id
                if str(version.source).startswith("models:/m-"):
                    model_id = str(version.source)[len("models:/"):]
        elif uri.startswith("runs:/"):
            run_id, _, path = uri[len("runs:/"):].partition("/")
            model_id = _run_model_id(client, run_id, path or "generator")
        model = client.get_logged_model(model_id) if model_id else None
        run_id = run_id or (model.source_run_id if model else None)
        run = client.get_run(run_id) if run_id else None
    except Exception as e:
        if is_not_found(e):
            return None, None
        raise
    return model, run


def _run_model_id(client: Any, run_id: str, name: str) -> str | None:
    run = client.get_run(run_id)
    found = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'", max_results=10)
    ready = [m for m in found if str(m.status).endswith("READY")]
    return str(ready[0].model_id) if ready else None
