"""`gan-pipeline evaluate`: FID-style scores of any logged generator against a dataset.

The model is a run's generator (--run-id) or any model URI (--model); its dataset,
image size and data folder default to what the source run trained on. Images come
from the model's exported generator through gan.sampling (a count and a seed, as in
training), so every logged generator can be scored, with any sample count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipelines.errors import TrackingError
from pipelines.registry.lookup import resolve_model
from pipelines.tracking import names


@dataclass
class EvalRequest:
    model: str | None
    run_id: str | None
    dataset: str | None
    backbone: str | None  # None: what the model was scored with in training
    num_samples: int | None
    seed: int | None
    data_dir: str | None


@dataclass
class Evaluation:
    scores: dict[str, float]
    run: Any | None  # the source run, when known
    dataset: str
    backbone: str
    num_samples: int
    seed: int
    logged: dict[str, float]  # what training logged for this very model (empty if unknown)


def _source(client: Any, req: EvalRequest) -> tuple[Any | None, Any | None, str]:
    """(LoggedModel, source run, model URI) of the request."""
    if req.run_id:
        uri = f"runs:/{req.run_id}/{names.GENERATOR_DIR}"
        model, run = resolve_model(client, uri)
        if run is None:
            raise TrackingError(f"--run-id {req.run_id}: no such MLflow run in this store")
        return model, run, uri
    assert req.model is not None
    model, run = resolve_model(client, req.model)
    return model, run, req.model


def evaluate(client: Any, req: EvalRequest) -> Evaluation:
    """Score the requested model. Every setting left out is the one training used for it
    (dataset, image size, backbone, sample count, seed), so the scores reproduce the
    values logged for that model (`logged`)."""
    import torch

    from gan.data import load_dataset
    from gan.metrics import evaluate_images
    from pipelines.registry.generate import generate_images

    model, run, uri = _source(client, req)
    params = run.data.params if run else {}
    tags = model.tags if model else {}
    dataset = req.dataset or params.get("dataset", "mnist-5k")
    data_dir = req.data_dir or params.get("data_dir", "./data")
    image_size = int(params.get("image_size", 0)) if not req.dataset else 0
    backbone = req.backbone or tags.get("backbone") or params.get("backbone") or "classifier"
    num_samples = req.num_samples or int(tags.get("eval_samples") or params.get("eval_samples") or 1000)
    seed = req.seed if req.seed is not None else int(tags.get("seed") or params.get("seed") or 0)
    if num_samples < 10:
        raise TrackingError(f"--num-samples={num_samples} is invalid: must be >= 10")
    real = load_dataset(dataset, data_dir, image_size, mode="auto")  # reads only the images it scores
    fake = torch.from_numpy(generate_images(uri, num_samples, seed))
    if tuple(fake.shape[1:]) != real.shape:
        raise TrackingError(
            f"the model makes {tuple(fake.shape[1:])} images but dataset {dataset!r} holds {real.shape}: "
            "pick the dataset it was trained on"
        )
    scores = evaluate_images(real, fake, backbone=backbone, num_samples=num_samples, seed=seed)
    logged = {}
    if model is not None and (dataset, backbone, str(num_samples), str(seed)) == tuple(
            tags.get(k) for k in ("dataset", "backbone", "eval_samples", "seed")):
        logged = {m.key: m.value for m in (model.metrics or [])}
    return Evaluation(scores, run, dataset, backbone, num_samples, seed, logged)


def log_scores(client: Any, run: Any, backbone: str, scores: dict[str, float]) -> None:
    """Write scores into the source run as eval_<backbone>_<metric> at its last step."""
    from mlflow.entities import Metric

    from gan.step_metrics import STEP_METRICS

    last = max((m.step for m in client.get_metric_history(run.info.run_id, STEP_METRICS[0])), default=0)
    metrics = [Metric(f"{names.EVAL_PREFIX}{backbone}_{k}", float(v), 0, last)
               for k, v in scores.items() if math.isfinite(v)]
    client.log_batch(run.info.run_id, metrics=metrics)


def table(scores: dict[str, float], logged: dict[str, float] | None = None) -> str:
    """One line a metric; with `logged`, the value training logged for this model beside it."""
    width = max(len(k) for k in scores)
    lines = []
    for k, v in scores.items():
        line = f"{k:<{width}}  {v:12.6g}"
        if logged and k in logged:
            line += f"   logged in training {logged[k]:12.6g}"
        lines.append(line)
    return "\n".join(lines)
