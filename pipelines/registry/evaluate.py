"""`gan-pipeline evaluate`: FID-style scores of any logged generator against a dataset.

The model is a run's generator (--run-id) or any model URI (--model); its dataset,
image size and data folder default to what the source run trained on. Images come
from the model's pyfunc face (count + seed), so every logged generator can be scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipelines.errors import TrackingError
from pipelines.tracking import names


@dataclass
class EvalRequest:
    model: str | None
    run_id: str | None
    dataset: str | None
    backbone: str
    num_samples: int
    seed: int
    data_dir: str | None


def _source_run(client: Any, req: EvalRequest) -> Any | None:
    """The run that produced the model: --run-id, or the registry version's source run."""
    if req.run_id:
        try:
            return client.get_run(req.run_id)
        except Exception:  # noqa: BLE001 - unknown id
            raise TrackingError(f"--run-id {req.run_id}: no such MLflow run in this store") from None
    if req.model and req.model.startswith("runs:/"):
        return client.get_run(req.model[len("runs:/"):].split("/")[0])
    if req.model and req.model.startswith("models:/"):
        import mlflow

        try:
            info = mlflow.models.get_model_info(req.model)
            return client.get_run(info.run_id) if info.run_id else None
        except Exception:  # noqa: BLE001 - resolved again (with a clear error) when loading
            return None
    return None


def evaluate(client: Any, req: EvalRequest) -> tuple[dict[str, float], Any, str]:
    """(scores, source run or None, dataset name) for the requested model."""
    import torch

    from gan.data import load_dataset
    from gan.metrics import evaluate_images
    from pipelines.registry.generate import generate_images

    run = _source_run(client, req)
    params = run.data.params if run else {}
    dataset = req.dataset or params.get("dataset", "mnist-5k")
    data_dir = req.data_dir or params.get("data_dir", "./data")
    image_size = int(params.get("image_size", 0)) if not req.dataset else 0
    model = req.model or f"runs:/{req.run_id}/{names.GENERATOR_DIR}"
    real = load_dataset(dataset, data_dir, image_size)
    fake = torch.from_numpy(generate_images(model, req.num_samples, req.seed))
    if tuple(fake.shape[1:]) != real.shape:
        raise TrackingError(
            f"the model makes {tuple(fake.shape[1:])} images but dataset {dataset!r} holds {real.shape}: "
            "pick the dataset it was trained on"
        )
    scores = evaluate_images(real, fake, backbone=req.backbone, num_samples=req.num_samples, seed=req.seed)
    return scores, run, dataset


def log_scores(client: Any, run: Any, backbone: str, scores: dict[str, float]) -> None:
    """Write scores into the source run as eval_<backbone>_<metric> at its last step."""
    from mlflow.entities import Metric

    from gan.train import STEP_METRICS

    last = max((m.step for m in client.get_metric_history(run.info.run_id, STEP_METRICS[0])), default=0)
    metrics = [Metric(f"{names.EVAL_PREFIX}{backbone}_{k}", float(v), 0, last)
               for k, v in scores.items() if math.isfinite(v)]
    client.log_batch(run.info.run_id, metrics=metrics)


def table(scores: dict[str, float]) -> str:
    width = max(len(k) for k in scores)
    return "\n".join(f"{k:<{width}}  {v:10.4f}" for k, v in scores.items())
