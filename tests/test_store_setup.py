"""Opening the tracking store: a new sqlite store opened by two processes at the same
moment is set up once and both go on (MLflow sets a new file up, without a lock, in
whichever process opens it first); and building a client changes nothing else in the
process (MLflow's global tracking URI, the environment)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sqlite_store
from mlflow.tracking import MlflowClient

from pipelines.tracking.store import client_for, global_tracking_uri

ROUNDS = 4

# One process of the race: for each round, a new store; say ready, wait for the go, open.
OPENER = """
import sys, time, traceback
from pathlib import Path
from pipelines.tracking.store import client_for, global_tracking_uri
import mlflow.store.tracking.sqlalchemy_store, alembic.command  # imported before the go, not during
folder, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(rounds):
    (folder / f"ready-{i}-{me}").touch()
    while not (folder / f"go-{i}").exists():
        time.sleep(0.001)
    try:
        client_for(f"sqlite:///{folder}/r{i}/mlflow.db").search_experiments()
        print(f"round {i} ok", flush=True)
    except Exception as e:
        print(f"round {i} FAILED {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
"""


@pytest.mark.integration
def test_a_new_sqlite_store_opened_by_two_processes_at_once_is_set_up_once(tmp_path):
    for i in range(ROUNDS):
        (tmp_path / f"r{i}").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path), name, str(ROUNDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("a", "b")]
    try:
        for i in range(ROUNDS):
            deadline = time.monotonic() + 120
            while not all((tmp_path / f"ready-{i}-{n}").exists() for n in "ab"):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "an opener is stuck"
                time.sleep(0.005)
            (tmp_path / f"go-{i}").touch()
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for out in outs:
        rounds = [line for line in out.splitlines() if line.startswith("round ")]
        assert rounds == [f"round {i} ok" for i in range(ROUNDS)], out
    for i in range(ROUNDS):  # each store works, at MLflow's current schema
        client = MlflowClient(f"sqlite:///{tmp_path}/r{i}/mlflow.db")
        run = client.create_run(client.create_experiment("after")).info.run_id
        client.log_metric(run, "x", 1.0)
        assert client.get_run(run).data.metrics == {"x": 1.0}


def test_building_a_client_changes_neither_the_global_tracking_uri_nor_the_environment(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before_uri, before_env = mlflow.get_tracking_uri(), dict(os.environ)
    for uri in (sqlite_store(tmp_path / "a"), f"sqlite:///{tmp_path}/new/mlflow.db"):
        client_for(uri).search_experiments()
        assert mlflow.get_tracking_uri() == before_uri
        assert dict(os.environ) == before_env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "b"))  # the default store
    before_uri, before_env = mlflow.get_tracking_uri(), dict(os.environ)
    client_for().search_experiments()
    client_for(sqlite_store(tmp_path / "c")).search_experiments()
    assert mlflow.get_tracking_uri() == before_uri and dict(os.environ) == before_env
    # where MLflow code reads the global URI whatever client called it (promote, generate,
    # evaluate): set for a block only, then as it was
    with global_tracking_uri("http://127.0.0.1:9"):
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
    assert mlflow.get_tracking_uri() == before_uri and dict(os.environ) == before_env
    assert not Path(tmp_path / "mlflow.db").exists()
