"""From laptop to cluster, for real, on this machine: a two-node Ray cluster started with
`ray start` (token auth on), an MLflow server on PostgreSQL with proxied artifacts, sweeps
submitted with `ray job submit`, then promote and generate from another process against
the same server. No mock; the fixtures stop every process by PID (tests/cluster_parts.py).

The "Run on a cluster" guide (docs/cluster.md) runs these same commands."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_parts import RayCluster, mlflow_server, pg_bindir, pids_mentioning, postgres  # noqa: E402
from conftest import missing_outside_ci  # noqa: E402

from pipelines.tracking import names  # noqa: E402

# Slow (`pytest -m slow`): PostgreSQL, an authenticated `mlflow server` and a two-node Ray
# cluster take minutes to start and each test minutes to run.
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(missing_outside_ci(pg_bindir() is None),
                                 reason="needs Debian's postgresql (.ci/run installs it)")]

# Tiny trials: the point is where they run and where their numbers go, not the GAN.
TINY = {"dataset": "mnist-5k", "arch": "mlp", "mlp_width": 16, "latent_dim": 16, "batch_size": 128,
        "eval_every": 1, "checkpoint_every": 1, "eval_samples": 200, "device": "cpu", "eval_budget": 0,
        "lr_g": {"type": "float", "low": 2.0e-4, "high": 1.0e-3, "log": True}}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """PostgreSQL -> an authenticated MLflow server, for the whole module."""
    root = tmp_path_factory.mktemp("tracking")
    password = secrets.token_urlsafe(24)  # this run's only; travels as PGPASSWORD
    with postgres(password) as db, \
            mlflow_server(db, password, root / "artifacts", root / "mlflow-server.log") as server:
        # Like ray_cluster.yaml: every node's processes (job drivers, trials) inherit the
        # server's address and credentials; so does this process (it reads the runs).
        patch = pytest.MonkeyPatch()
        for key, value in server.client_env.items():
            patch.setenv(key, value)
        env = {"MLFLOW_TRACKING_URI": server.url, **server.client_env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
               "PYTHONWARNINGS": "ignore", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "GAN_PIPELINES_DEBUG": "1"}
        try:
            server.wait()
            yield SimpleNamespace(url=server.url, env=env, artifacts=root / "artifacts")
        finally:
            patch.undo()


@pytest.fixture
def cluster(tracking, tmp_path):
    """Two Ray nodes whose processes log to the module's server, fresh for each test: on a
    cluster shared by the module, Ray 2.60 placed every trial of a later job on one node
    in 3 of 5 runs (both nodes' CPUs free when it was submitted), which the tests about
    trials on both nodes cannot use."""
    ray_cluster = RayCluster(tmp_path, tracking.env)
    try:
        yield SimpleNamespace(url=tracking.url, ray=ray_cluster, root=tmp_path, artifacts=tracking.artifacts)
    finally:
        ray_cluster.stop()
    assert not pids_mentioning(str(ray_cluster.temp)), "a Ray process of the test cluster survived"


def _job_dir(cluster, name: str, epochs: int, **params) -> Path:
    """The job's --working-dir: just the space file (the code is installed on every node)."""
    folder = cluster.root / name
    folder.mkdir()
    space = {"description": "cluster test", "params": {**TINY, "epochs": epochs, **params}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(space))
    return folder


def _submit(job: Path, name: str, *extra: str) -> list[str]:
    """`ray job submit` of a sweep (docs/cluster.md's command): the space file travels in the
    working dir; the job's driver finds the cluster in $RAY_ADDRESS and the server in
    $MLFLOW_TRACKING_URI, both set on every node."""
    return ["job", "submit", "--working-dir", str(job), "--submission-id", f"{name}-{secrets.token_hex(3)}",
            "--", "gan-pipeline", "sweep", "--space", "tiny.yaml", "--scheduler", "none", "--name", name,
            "--ray-storage", "ray_results", *extra]


def _children(client, name: str) -> list:
    from pipelines.sweep.report import child_runs
    from pipelines.tracking.sweeps import find_sweep

    parent = find_sweep(client, name)
    return child_runs(client, parent.info.experiment_id, parent.info.run_id)


def _client(cluster):
    from pipelines.tracking.store import client_for

    return client_for(cluster.url)


def test_a_sweep_submitted_as_a_ray_job_runs_on_both_nodes_and_logs_through_the_server(cluster):
    job = _job_dir(cluster, "job-two-nodes", epochs=1)
    done = cluster.ray.cli(*_submit(job, "two-nodes", "--trials", "2", "--concurrency", "2"), check=False)
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]

    client = _client(cluster)
    runs = _children(client, "two-nodes")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    nodes = cluster.ray.alive_nodes()
    assert {nodes[r.data.tags[names.NODE_ID]] for r in runs} == {"node_a", "node_b"}  # one trial on each
    # Proxied artifacts: runs name the server's artifact route; the files land in its folder.
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)
    assert any(p.suffix == ".pt" for p in cluster.artifacts.rglob("*"))
    with pytest.raises(urllib.error.HTTPError, match="401"):  # basic-auth: no credentials, no runs
        urllib.request.urlopen(f"{cluster.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)

    # promote and generate: other processes, the same server (the URI from the environment)
    env = {**cluster.ray.env, "MLFLOW_TRACKING_URI": cluster.url}
    promote = subprocess.run(["gan-pipeline", "promote", "--sweep", "two-nodes", "--model-name", "cluster-gen"],
                             env=env, capture_output=True, text=True, timeout=300, cwd=cluster.root)
    assert promote.returncode == 0, promote.stderr
    grid = cluster.root / "grid.png"
    generate = subprocess.run(["gan-pipeline", "generate", "--model", "models:/cluster-gen@champion", "-n", "4",
                               "--out", str(grid)], env=env, capture_output=True, text=True, timeout=300)
    assert generate.returncode == 0 and grid.stat().st_size > 0, generate.stderr


def test_population_members_of_2_workers_are_ddp_groups_across_both_nodes(cluster):
    """`sweep --scheduler pbt --workers-per-trial 2` as a Ray job: each member's every
    life is a DDP group over both nodes; the weaker member goes on from the stronger
    one's checkpoint, as one run. The data is a prepared dataset in a folder both nodes
    see, streamed: each worker reads its own slice of every batch from the shards."""
    import json

    from gan.prepare import prepare_dataset
    from pipelines.tracking.exploits import exploits

    shared = prepare_dataset("mnist-5k", out=cluster.root / "shared" / "digits").manifest
    job = _job_dir(cluster, "job-ddp", epochs=2, dataset=f"prepared:{shared.path}", data_mode="stream")
    done = cluster.ray.cli(*_submit(job, "ddp", "--scheduler", "pbt", "--trials", "2", "--perturb-every", "1",
                                    "--workers-per-trial", "2"), check=False)
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    client = _client(cluster)
    runs = _children(client, "ddp")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" and r.data.params["world_size"] == "2" for r in runs)
    assert {r.inputs.dataset_inputs[0].dataset.digest for r in runs} == {shared.digest[:36]}
    rows = [e for r in runs for e in exploits(client, r.info.run_id)]
    assert [e["epoch"] for e in rows] == [1]  # 2 members: the weaker copies the stronger at the one perturbation
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "d_loss")]
        assert steps == sorted(set(steps))
        assert [int(m.value) for m in client.get_metric_history(r.info.run_id, names.EPOCH)] == [1, 2]
    # The members took turns (2 CPUs in all): a life's workers waited for the other
    # member's, and that wait is left out of what the member used.
    for r in runs:
        m, span = r.data.metrics, (r.info.end_time - r.info.start_time) / 1000
        assert m[names.QUEUED_S] >= 0 and m[names.WALL_S] + m[names.QUEUED_S] <= span + 1, (m, span)
    assert max(r.data.metrics[names.QUEUED_S] for r in runs) > 5
    listed = cluster.ray.cli("list", "actors", "--filter", "class_name=RayTrainWorker", "--detail",
                         "--format", "json", "--limit", "100", "--address", cluster.ray.dashboard)
    workers = json.loads(listed.stdout)  # only this sweep had Ray Train workers
    nodes = cluster.ray.alive_nodes()
    assert {nodes.get(a["node_id"]) for a in workers} == {"node_a", "node_b"}, workers


def test_a_population_on_two_nodes_exploits_checkpoints_written_on_the_other_node(cluster):
    """`sweep --scheduler pbt` as a Ray job: 8 members spread over both nodes hand their
    checkpoints to each other through Tune's storage; each exploit names the node that
    wrote the checkpoint it copied and the node that continued from it."""
    from pipelines.tracking.exploits import exploits

    job = _job_dir(cluster, "job-pbt", epochs=5)
    done = cluster.ray.cli(*_submit(job, "pbt-nodes", "--scheduler", "pbt", "--trials", "8"), check=False)
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    client = _client(cluster)
    runs = _children(client, "pbt-nodes")
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    rows = [e for r in runs for e in exploits(client, r.info.run_id)]
    assert sorted(e["epoch"] for e in rows) == [1, 1, 2, 2, 3, 3, 4, 4]  # a quarter of 8 copy at each perturbation
    nodes = cluster.ray.alive_nodes()
    assert {nodes[e["node"]] for e in rows} | {nodes[e["from_node"]] for e in rows} <= {"node_a", "node_b"}
    used = {nodes.get(r.data.tags.get(names.NODE_ID)) for r in runs} | {nodes[e["node"]] for e in rows}
    crossed = [e for e in rows if e["node"] != e["from_node"]]
    # Where members run is Tune's choice. With both nodes used, each exploit crosses about
    # half the time (8 staying on one node: 1 in 256). In some runs Tune ran all 8 on one
    # node (a fresh cluster, both CPUs free; the sweeps' reuse_actors=True is the suspect):
    # then nothing can cross here, and the DDP test above crosses nodes by construction
    # (every life's group spans both).
    if used == {"node_a", "node_b"}:
        assert crossed, f"every exploit copied a checkpoint of its own node: {rows}"
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "d_loss")]
        assert steps == sorted(set(steps))


def test_a_lost_worker_node_s_trial_resumes_from_its_checkpoint_on_the_head(cluster):
    job = _job_dir(cluster, "job-node-loss", epochs=8)  # long enough to be caught mid-run
    args = _submit(job, "node-loss", "--trials", "2", "--concurrency", "2")
    env = {**cluster.ray.env, "RAY_API_SERVER_ADDRESS": cluster.ray.dashboard}
    submit = subprocess.Popen([str(Path(sys.executable).parent / "ray"), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = _client(cluster)
    nodes = cluster.ray.alive_nodes()
    node_b = next(n for n, name in nodes.items() if name == "node_b")
    lost = None
    deadline = time.time() + 240
    while lost is None:  # the trial on node_b, once it has a checkpoint to resume from
        assert time.time() < deadline and submit.poll() is None, "no checkpoint on node_b in time"
        try:
            for r in _children(client, "node-loss"):
                if r.data.tags.get(names.NODE_ID) == node_b and any(
                        a.path.endswith(".pt") for a in client.list_artifacts(r.info.run_id, names.CHECKPOINT_DIR)):
                    lost = r
        except Exception:  # noqa: BLE001 - the parent run does not exist yet
            pass
        time.sleep(1)
    killed_at = time.time()
    cluster.ray.kill_node("node_b")
    out, _ = submit.communicate(timeout=400)
    (cluster.root / "node-loss-job.log").write_text(f"job ended {time.time() - killed_at:.1f} s after the kill\n{out}")
    assert submit.returncode == 0 and "succeeded" in out, out[-4000:]
    runs = _children(client, "node-loss")
    trial_ids = [r.data.tags[names.TRIAL_ID] for r in runs]
    assert len(runs) == 2 and len(set(trial_ids)) == 2  # every trial accounted for, no duplicate run
    assert all(r.info.status == "FINISHED" for r in runs)
    resumed = client.get_run(lost.info.run_id)
    assert names.RESUMED_FROM_STEP in resumed.data.tags, (resumed.data.tags, out[-4000:])
    assert int(resumed.data.tags[names.RESUMED_FROM_STEP]) > 0  # from its checkpoint, not from scratch
    assert nodes[resumed.data.tags[names.NODE_ID]] == "node_a"  # finished on the head
