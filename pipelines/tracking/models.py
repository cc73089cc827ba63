"""The generator as MLflow 3 LoggedModels, so a score and the model that earned it stay
one object: the Models tab and `mlflow.search_logged_models(order_by=metrics.fid)` rank
generators by their own scores, and promote registers exactly the model it ranked.

A run keeps two: `generator-best` (replaced each time an eval improves the run's best
FID; the one it replaces loses the role, and is deleted when it holds no other) and
`generator` (the final one, so runs:/RUN_ID/generator still names it). When the last
eval is also the best, one model carries both roles. Each model holds the run's params
and tags saying what it was scored on (dataset, image size, backbone, sample count), so
only comparable models compete.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from gan.config import RunConfig
from pipelines.tracking import names

BEST, FINAL = "best", "final"
# What a score depends on besides the generator: models compete only when these match.
COMPARABLE = ("dataset", "image_size", "backbone", "eval_samples")


def model_tags(cfg: RunConfig, image_shape: tuple[int, ...], role: str, epoch: int, step: int) -> dict[str, str]:
    return {
        names.MODEL_ROLE: role, names.MODEL_EPOCH: str(epoch), names.MODEL_STEP: str(step),
        "dataset": cfg.dataset, "image_size": str(image_shape[-1]), "backbone": cfg.backbone,
        "eval_samples": str(cfg.eval_samples), "seed": str(cfg.seed),
    }


def log_model(client: Any, run_id: str, cfg: RunConfig, generator: nn.Module, image_shape: tuple[int, ...],
              *, role: str, epoch: int, step: int) -> str:
    """Log `generator` (copied: the live module is left as it is) as a LoggedModel of the
    run, linked to the run at `step`; the caller logs the scores with its model id."""
    from mlflow.entities import LoggedModelOutput

    from pipelines.tracking.generator_model import save_generator
    from pipelines.tracking.store import config_params

    run = client.get_run(run_id)
    name = names.FINAL_MODEL if role.endswith(FINAL) else names.BEST_MODEL
    model = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, model_type=names.MODEL_TYPE,
        params=config_params(cfg), tags=model_tags(cfg, image_shape, role, epoch, step),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="gan-model-") as tmp:
            frozen = copy.deepcopy(generator)  # save_generator moves it to the CPU in eval mode
            path = save_generator(frozen, Path(tmp) / names.GENERATOR_DIR, cfg.latent_dim)
            client.log_model_artifacts(model.model_id, str(path))
        client.finalize_logged_model(model.model_id, "READY")
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    return str(model.model_id)


def run_models(client: Any, run_id: str) -> list[Any]:
    """The run's READY generator LoggedModels, newest first."""
    run = client.get_run(run_id)
    found = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        max_results=100,
    )
    return sorted((m for m in found if str(m.status).endswith("READY")),
                  key=lambda m: m.creation_timestamp, reverse=True)


def roles_of(model: Any) -> list[str]:
    """A model's roles: its role tag holds one ("best") or both ("best,final")."""
    return [r for r in model.tags.get(names.MODEL_ROLE, "").split(",") if r]


def model_roles(client: Any, run_id: str) -> set[str]:
    """The roles the run's kept models hold: {"best", "final"} for a run that finished."""
    return {r for m in run_models(client, run_id) for r in roles_of(m)}


def model_with_role(client: Any, run_id: str, role: str) -> Any | None:
    for m in run_models(client, run_id):
        if role in roles_of(m):
            return m
    return None


def drop_role(client: Any, run_id: str, role: str, keep: str) -> None:
    """Take `role` from the run's other models (an extended run's old final one, the best
    a better one replaces); a model left with no role is deleted."""
    for m in run_models(client, run_id):
        roles = roles_of(m)
        if m.model_id == keep or role not in roles:
            continue
        rest = [r for r in roles if r != role]
        if rest:
            client.set_logged_model_tags(m.model_id, {names.MODEL_ROLE: ",".join(rest)})
        else:
            client.delete_logged_model(m.model_id)


def add_role(client: Any, model: Any, role: str) -> None:
    roles = roles_of(model)
    if role not in roles:
        client.set_logged_model_tags(model.model_id, {names.MODEL_ROLE: ",".join([*roles, role])})
