"""A real two-node Ray cluster on loopback (head and worker, each with its own temp dir) and a real MLflow
server on 127.0.0.1: `run_search.py submit` sends a smoke search as a Ray Job; trials run on both nodes and the
server holds the parent run and its children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

import run_search

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def _wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args[:3]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered (Ray's dashboard answers 401 without its auth token)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path):
    # Unix socket paths must stay short: the nodes' temp dirs go under /tmp, not pytest's tmp_path.
    head_dir, worker_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rw", dir="/tmp")
    # Ray token auth stays on: every node and client says so and reads the same token (~/.ray/auth_token).
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_DEDUP_LOGS": "0",
           "RAY_AUTH_MODE": "token", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, mlflow_port = free_port(), free_port(), free_port()
    # each node's dashboard agent on a port of its own: both default to 52365, and on one machine the node that
    # binds it second has no agent (the head's is the one that takes jobs)
    head_agent, worker_agent = free_port(), free_port()
    processes = []
    try:
        processes.append(_spawn([str(BIN / "ray"), "start", "--head", "--block", "--port", str(gcs),
                                 "--node-ip-address", "127.0.0.1", "--temp-dir", head_dir, "--num-cpus", "1",
                                 "--num-gpus", "0", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                                 "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port",
                                 str(head_agent)], env, tmp_path / "head.log"))
        _wait_http(f"http://127.0.0.1:{dashboard}/api/version", 90, processes[0])
        processes.append(_spawn([str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{gcs}",
                                 "--node-ip-address", "127.0.0.1", "--temp-dir", worker_dir, "--num-cpus", "1",
                                 "--num-gpus", "0", "--dashboard-agent-listen-port", str(worker_agent)], env,
                                tmp_path / "worker.log"))
        processes.append(_spawn([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                 str(mlflow_port), "--workers", "1", "--backend-store-uri",
                                 f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
                                 str(tmp_path / "artifacts")], env, tmp_path / "mlflow.log"))
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", 90, processes[2])
        _wait_for_nodes(env, gcs, 2)
        yield {"jobs": f"http://127.0.0.1:{dashboard}", "mlflow": f"http://127.0.0.1:{mlflow_port}", "env": env}
    finally:
        for process in reversed(processes):
            _stop(process)


def _wait_for_nodes(env: dict, gcs: int, count: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{gcs}"], env=env,
                                capture_output=True, text=True)
        if status.stdout.count("node_") >= count:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster did not reach {count} nodes: {status.stdout}{status.stderr}")


def test_a_submitted_search_runs_on_both_nodes_and_logs_to_the_server(cluster, tmp_path):
    # as a user would: a new process with the cluster's environment (RAY_AUTH_MODE=token), from another folder
    result = subprocess.run([sys.executable, str(run_search.ROOT / "run_search.py"), "submit", "--address",
                             cluster["jobs"], "--wait", "--python", sys.executable, "--tracking-uri", cluster["mlflow"],
                             "--storage-path", str(tmp_path / "shared"), "--smoke-test", "--confirm", "0",
                             "--set", "search.num_samples=4", "--set", "search.scheduler=fifo",
                             "--set", "search.max_concurrent_trials=2"],
                            cwd=tmp_path, env=cluster["env"], capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "submitted Ray Job" in out and "ray job logs --address" in out
    client = MlflowClient(tracking_uri=cluster["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name("digits_freeze").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("freeze_search.role") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["node_id"] for c in children}) == 2  # trials ran on both nodes
    # on a cluster the test split is scored in a Ray task with a trial's resources (the checkpoint read from the
    # shared storage), and the recommendation's run holds its figures
    [tested] = [c for c in children if "test_score" in c.data.metrics]
    assert 0 < tested.data.metrics["test_score"] <= 1 and tested.data.tags["test_pid"].isdigit()
    # the job's driver (RAY_ADDRESS set, no --address) is not where it was scored
    assert tested.data.tags["test_pid"] != parent.data.tags["driver_pid"]
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_submit_refuses_a_local_store_before_submitting(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # a store from the environment would be accepted
    code = run_search.main(["submit", "--address", "http://127.0.0.1:1", "--smoke-test",
                            "--storage-path", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: --tracking-uri: got None; allowed: an MLflow server")
