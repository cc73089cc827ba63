"""The dataset input of a run (pipelines/tracking/inputs.py) against a real `mlflow server`."""

from __future__ import annotations

import threading

import torch
from mlflow.tracking import MlflowClient

from gan.data import ImageData
from pipelines.tracking.inputs import log_dataset


def _log_together(client: MlflowClient, runs: list[str], data: ImageData) -> list[Exception]:
    """Log `data` to every run from one thread each, all released at once: what went wrong."""
    start, errors = threading.Barrier(len(runs)), []

    def log(run_id: str) -> None:
        start.wait()
        try:
            log_dataset(client, run_id, "mnist-5k", data)
        except Exception as error:  # noqa: BLE001 - collected, asserted by the test
            errors.append(error)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_trials_that_log_the_same_data_at_once_all_get_it(mlflow_server):
    # The server's store looks a dataset up and then inserts it, so trials starting together
    # used to race: one of them died on the (experiment, name, digest) unique key (CI, stop
    # 29). Ten rounds of six at once lost that race in 8 of 10 rounds before the fix.
    client = MlflowClient(mlflow_server)
    for round_ in range(10):
        experiment = client.create_experiment(f"dataset-race-{round_}")
        runs = [client.create_run(experiment).info.run_id for _ in range(6)]
        data = ImageData(name="mnist-5k", labels=None,
                         images=torch.full((20, 1, 8, 8), round_, dtype=torch.uint8))
        assert _log_together(client, runs, data) == []
        inputs = [client.get_run(run_id).inputs.dataset_inputs for run_id in runs]
        assert {(i[0].dataset.name, i[0].dataset.digest, len(i)) for i in inputs} == {
            ("mnist-5k", data.fingerprint()[:36], 1)}
