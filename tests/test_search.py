"""Real searches: a local Ray runtime, a real sqlite MLflow store, the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

import run_search
from tune.config import load_config, parse_overrides
from tune.train import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
# the yolo spaces need the yolo extra and a data set: tests/test_yolo.py runs them on synthetic data
SPACES = sorted(p for p in (ROOT / "search_spaces").glob("*.yaml") if not p.name.startswith("yolo"))


def _search(tmp_path: Path, *args: str) -> tuple[int, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search.main(["--smoke-test", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
                            "--report-dir", str(tmp_path / "reports"), *args])
    return code, uri


def _runs(uri: str, experiment: str) -> tuple[object, list]:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def _overlap(children: list) -> int:
    """The largest number of trial runs open at one moment."""
    events = sorted([(r.info.start_time, 1) for r in children] + [(r.info.end_time, -1) for r in children],
                    key=lambda e: (e[0], e[1]))
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


@pytest.fixture(scope="module")
def default_smoke(ray_runtime, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("default")
    code, uri = _search(tmp_path)
    return code, uri, tmp_path


def test_smoke_search_logs_parent_and_nested_children_with_per_epoch_metrics(default_smoke):
    code, uri, _ = default_smoke
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    client = MlflowClient(tracking_uri=uri)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.num_samples"] == "4" and parent.data.params["train.epochs"] == "2"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "digits_freeze.yaml" in artifacts
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{n}" for n in ("report.txt", "summary.md", "frontier.png", "score_by_epoch.png",
                                    "resources_by_range.png")} <= report_files
    assert len(children) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        params = child.data.params
        assert {"freeze_stop", "lr", "epochs", "frozen_params", "trainable_params", "frozen_flops_share",
                "freeze_range"} <= set(params)
        assert params["freeze_range"] == f"[0, {params['freeze_stop']})"
        epochs_run = int(child.data.tags["epochs_run"])
        assert 1 <= epochs_run <= 2
        for key in METRIC_KEYS:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, epochs_run + 1)), key
        assert child.data.tags["mem_source"] == "model"


def test_trials_run_in_parallel(default_smoke):
    _, uri, _ = default_smoke
    _, children = _runs(uri, "digits_freeze")
    assert _overlap(children) >= 2


def test_gpu_fractions_from_the_config_pack_trials_onto_logical_gpus(ray_runtime, tmp_path):
    # The session's Ray has 2 logical GPUs: 0.5 GPU and 0.5 CPU per trial lets 4 trials run at once.
    code, uri = _search(tmp_path, "--set", "search.gpus_per_trial=0.5", "--set", "search.cpus_per_trial=0.5",
                        "--set", "search.num_samples=4", "--set", "search.scheduler=fifo")
    assert code == 0
    _, children = _runs(uri, "digits_freeze")
    assert [c.data.tags["trial_gpus"] for c in children] == ["0.5"] * 4
    assert [c.data.tags["trial_cpus"] for c in children] == ["0.5"] * 4
    assert _overlap(children) >= 3


@pytest.mark.parametrize("space", [p for p in SPACES if p.name != "digits_freeze.yaml"], ids=lambda p: p.name)
def test_every_search_space_file_smoke_runs(ray_runtime, tmp_path, space):
    code, uri = _search(tmp_path, "--space", str(space))
    assert code == 0
    import yaml

    parent, children = _runs(uri, yaml.safe_load(space.read_text())["name"])
    assert parent.info.status == "FINISHED"
    assert children and all(c.info.status == "FINISHED" for c in children)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_search.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "train.epochs=0"], "error: train.epochs: got 0 (int); allowed: an integer >= 1"),
    (["--set", "space.freeze_stop.high=12"], "error: space.freeze_stop.high: got 12 (out of range); allowed:"),
    (["--set", "space.freeze_stop.high=8"], "error: space.freeze_stop: got 8 (freezes every block); allowed:"),
    (["--set", "task.name=no_such.module:task"], "error: task.name: got 'no_such.module:task' (ModuleNotFoundError"),
    (["--space", "missing.yaml"], "error: --space: got 'missing.yaml' (no such file)"),
    (["--num-samples", "0"], "error: search.num_samples: got 0 (int); allowed: an integer >= 1"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing_behind(tmp_path, args, expected):
    result = _cli(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no Ray results: nothing was started


def test_help_lists_the_options(tmp_path):
    result = _cli(tmp_path, "--help")
    assert result.returncode == 0
    for option in ("--space", "--num-samples", "--set", "--seed", "--tracking-uri", "--storage-path", "--smoke-test"):
        assert option in result.stdout


def test_a_crashed_trial_is_retried_from_its_last_checkpoint(ray_runtime, tmp_path):
    # 4 epochs of 6 batches; the crash comes in batch 8, inside epoch 2, after epoch 1's checkpoint.
    marker = tmp_path / "crashed"
    space = tmp_path / "flaky.yaml"
    space.write_text(f"""
name: flaky
task: {{name: "conftest:make_flaky_task", options: {{marker: "{marker}", fail_at_batch: 8}}}}
train: {{epochs: 4, batch_size: 8, lr: 0.01}}
space: {{freeze_stop: {{type: choice, values: [1]}}}}
search: {{num_samples: 1, scheduler: fifo}}
""")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search.main(["--space", str(space), "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
                            "--report-dir", str(tmp_path / "reports")])
    assert code == 0
    assert marker.exists()  # the crash happened
    _, children = _runs(uri, "flaky")
    [child] = children
    assert child.info.status == "FINISHED"
    assert child.data.tags["resumed_at_epoch"] == "2"  # it went on from the epoch-1 checkpoint, not from zero
    history = MlflowClient(tracking_uri=uri).get_metric_history(child.info.run_id, "score")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # one MLflow run, no epoch logged twice


def _get(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body.startswith(b"{") else {"html": body.decode(errors="replace")}


@pytest.mark.slow
def test_mlflow_ui_command_serves_the_runs_of_a_smoke_search(default_smoke):
    """The printed `mlflow ui --backend-store-uri ...` command, run for real on 127.0.0.1."""
    _, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(f"{base}/health")
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow ui did not answer within 90 s") from None
                time.sleep(0.5)
        assert "<html" in _get(f"{base}/")["html"].lower()
        found = _get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [parent.info.experiment_id]})
        assert {r["info"]["run_id"] for r in found["runs"]} == {parent.info.run_id} | {c.info.run_id for c in children}
        listed = _get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={parent.info.run_id}")
        assert "report" in {f["path"] for f in listed["files"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_recommended_model_loads_back_from_mlflow_and_scores_what_its_trial_scored(default_smoke):
    import mlflow.pytorch
    import torch

    from tune.tasks.base import classification_metrics
    from tune.tasks.digits import make_task

    _, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(parent.data.tags["recommended_model_uri"])
    trial = next(c for c in children if c.info.run_name == parent.data.tags["recommended_trial"])
    best = max(m.value for m in MlflowClient(tracking_uri=uri).get_metric_history(trial.info.run_id, "score"))
    task = make_task(labels_per_class=10, val_size=1000)
    with torch.no_grad():
        assert classification_metrics(model, *task.val_data)["val_accuracy"] == pytest.approx(best, abs=1e-9)


def test_report_command_rebuilds_the_report_from_mlflow_alone(default_smoke, tmp_path, capsys):
    _, uri, _ = default_smoke
    code = run_search.main(["report", "--tracking-uri", uri, "--report-dir", str(tmp_path), "--tolerance", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Frontier over score (max), epoch_time_s (min), peak_mem_mb (min)" in out and "Recommendation:" in out
    [folder] = list(tmp_path.iterdir())
    assert {p.name for p in folder.iterdir()} >= {"report.txt", "summary.md", "frontier.png"}
    assert run_search.main(["report", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "error: --experiment: got 'nope' (no experiment 'nope'" in capsys.readouterr().err


def test_multi_objective_search_runs_every_trial_to_the_end_and_reports_that_frontier(ray_runtime, tmp_path,
                                                                                   capsys):
    code, uri = _search(tmp_path, "--set", "search.objectives={score: max, peak_mem_mb: min}")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert json.loads(parent.data.tags["freeze_search.objectives"]) == [["score", "max"], ["peak_mem_mb", "min"]]
    assert all(c.data.tags["stopped_early"] == "False" for c in children)  # FIFO: ASHA would bias the front
    assert "Frontier over score (max), peak_mem_mb (min)" in capsys.readouterr().out


def test_a_grid_search_runs_each_combination_once_per_sample_and_trials_share_prefixes(ray_runtime, tmp_path,
                                                                                          capsys):
    code, uri = _search(tmp_path, "--set", "search.algorithm=grid", "--set", "space.lr=0.001", "--num-samples", "2",
                        "--set", "space.freeze_stop={type: choice, values: [none, 3, backbone]}")
    assert code == 0
    _, children = _runs(uri, "digits_freeze")
    assert sorted(c.data.params["freeze_range"] for c in children) == ["[0, 0)"] * 2 + ["[0, 3)"] * 2 + ["[0, 6)"] * 2
    assert all(c.data.tags["stopped_early"] == "False" for c in children)
    out = capsys.readouterr().out
    assert "a grid of 3 x 2 trials" in out
    # the second trial of a depth loads the first one's prefix outputs from the storage folder
    tags = sorted(c.data.tags["prefix_cache"] for c in children)
    assert tags.count("off: nothing frozen") == 2 and "on (shared, loaded)" in tags
    files = list((tmp_path / "ray" / "prefix_cache").glob("*.pt"))
    assert len(files) == 2
    size = sum(f.stat().st_size for f in files) / 2**20
    assert f"Frozen-prefix cache: 2 files, {size:.1f} MB in {tmp_path / 'ray' / 'prefix_cache'} (" in out


def test_layers_lists_the_default_models_blocks_and_cut_points(capsys):
    assert run_search.main(["layers"]) == 0
    out = capsys.readouterr().out
    assert "--- freeze: 6 (backbone)" in out and "--- freeze: 7 (all_but_head)" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 6]
    assert [row[1] for row in rows] == ["stem", "conv1", "conv2", "conv3", "conv4", "conv5", "neck", "head"]
    assert rows[-1][-1] == "100.0%"
    assert sum(int(row[3].replace(",", "")) for row in rows) == 152_570


def test_time_budget_stops_the_search_cleanly(ray_runtime, tmp_path, capsys):
    code, uri = _search(tmp_path, "--set", "search.num_samples=40", "--set", "train.epochs=10", "--time-budget", "6")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert parent.info.status == "FINISHED"
    assert len(children) < 40  # later trials never started
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert "the time budget of 6 s stopped the search" in capsys.readouterr().out


def test_confirm_reruns_the_top_candidates_with_fresh_seeds(ray_runtime, tmp_path, capsys):
    code, uri = _search(tmp_path, "--confirm", "2", "--confirm-top", "2")
    assert code == 0
    _, children = _runs(uri, "digits_freeze")
    confirm_runs = [c for c in children if c.data.tags.get("phase") == "confirm"]
    assert len(confirm_runs) == 4  # 2 candidates x 2 seeds
    assert sorted(c.data.params["seed"] for c in confirm_runs) == ["1", "1", "2", "2"]
    searched = {c.info.run_name: c for c in children if c.data.tags.get("phase") == "search"}
    for run in confirm_runs:
        source = searched[run.data.tags["candidate"]]
        assert run.data.params["freeze_stop"] == source.data.params["freeze_stop"]
        assert run.data.params["lr"] == source.data.params["lr"]
    out = capsys.readouterr().out
    assert "Confirmation (fresh seeds" in out and "Confirmed recommendation:" in out


def _space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _run_space(tmp_path: Path, text: str) -> tuple[int, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search.main(["--space", str(_space_file(tmp_path, text)), "--tracking-uri", uri,
                            "--storage-path", str(tmp_path / "ray"), "--report-dir", str(tmp_path / "reports")])
    return code, uri


def test_a_diverging_trial_stops_is_tagged_and_the_search_goes_on(ray_runtime, tmp_path):
    code, uri = _run_space(tmp_path, """
name: diverge
task: {name: "conftest:make_tiny_task"}
train: {epochs: 4, batch_size: 8, optimizer: sgd, momentum: 0.0}
space: {lr: {type: choice, values: [0.01, 1.0e+30]}, freeze_stop: 1}
search: {num_samples: 6, scheduler: fifo}
""")
    assert code == 0
    _, children = _runs(uri, "diverge")
    lrs = {c.data.params["lr"] for c in children}
    assert lrs == {"0.01", "1e+30"}, "both learning rates must have been sampled for this test to mean anything"
    for child in children:
        assert child.info.status == "FINISHED"
        if child.data.params["lr"] == "1e+30":
            assert child.data.tags["diverged"] == "true"
            assert int(child.data.tags["epochs_run"]) < 4  # it stopped at the diverged epoch
        else:
            assert "diverged" not in child.data.tags and child.data.tags["epochs_run"] == "4"


def test_an_out_of_memory_trial_fails_with_its_reason_and_the_search_goes_on(ray_runtime, tmp_path):
    code, uri = _run_space(tmp_path, """
name: oom
task: {name: "conftest:make_big_batch_oom_task", options: {limit: 16}}
train: {epochs: 2, freeze_stop: 1}
space: {batch_size: {type: choice, values: [8, 48]}}
search: {num_samples: 6, scheduler: fifo}
""")
    assert code == 0  # some trials finished
    _, children = _runs(uri, "oom")
    by_batch = {c.data.params["batch_size"] for c in children}
    assert by_batch == {"8", "48"}, "both batch sizes must have been sampled for this test to mean anything"
    for child in children:
        if child.data.params["batch_size"] == "48":
            assert child.info.status == "FAILED"
            assert child.data.tags["failure_reason"].startswith("RuntimeError: out of memory at epoch 1: MemoryError")
        else:
            assert child.info.status == "FINISHED"


@pytest.mark.parametrize("key", ["freeze_stop", "freeze"])
def test_freeze_aware_gpus_give_deeper_freezes_a_smaller_share(ray_runtime, tmp_path, key):
    space = (["--set", "space.freeze_stop={type: choice, values: [0, 7]}"] if key == "freeze_stop" else
             ["--set", "space.freeze_stop=null", "--set", "space.freeze={type: choice, values: [0, all_but_head]}"])
    code, uri = _search(tmp_path, "--set", "search.gpus_per_trial=1.0", "--set", "search.freeze_aware_gpus=true",
                        "--set", "search.cpus_per_trial=0.5", "--set", "search.scheduler=fifo",
                        "--set", "search.num_samples=8", "--set", "search.max_concurrent_trials=4", *space)
    assert code == 0
    _, children = _runs(uri, "digits_freeze")
    shares = {c.data.params["freeze_range"].split(", ")[1].rstrip(")"): float(c.data.tags["trial_gpus"])
              for c in children}
    assert set(shares) == {"0", "7"}, "both depths must have been sampled for this test to mean anything"
    assert shares["0"] == 1.0  # nothing frozen: the whole GPU it asked for
    assert shares["7"] <= 0.25  # all but the head: a small share, so several such trials share a GPU


def test_concurrency_counts_freeze_aware_shares_at_the_smallest(ray_runtime):
    from tune import search

    cfg = load_config(ROOT / "search_spaces" / "digits_freeze.yaml", parse_overrides(
        ["search.gpus_per_trial=1.0", "search.cpus_per_trial=0.25", "search.num_samples=20"]))
    assert search._concurrency(cfg) == 2  # 2 logical GPUs, a whole one per trial
    assert search._concurrency(cfg, smallest_gpu_share=0.25) == 8  # 8 of the deepest freezes fit, CPUs allow 8


def test_gpus_per_trial_beyond_every_node_is_refused_here_and_a_warning_on_a_cluster(ray_runtime, capsys):
    from tune.config import ConfigError

    run_search._check_gpus(2.0, on_cluster=False)  # 2 logical GPUs on the one node: fits
    with pytest.raises(ConfigError, match=r"^search.gpus_per_trial: got 3.0 \(the largest node has 2\)"):
        run_search._check_gpus(3.0, on_cluster=False)
    run_search._check_gpus(3.0, on_cluster=True)  # an autoscaler may add a bigger node: trials wait for it
    assert "warning: search.gpus_per_trial is 3 but no node" in capsys.readouterr().err


def test_a_relative_data_path_reaches_trials_that_run_in_their_own_folders(ray_runtime, tmp_path, monkeypatch):
    import torch
    from conftest import make_tiny_task

    (tmp_path / "inputs").mkdir()
    torch.save(make_tiny_task().train_data, tmp_path / "inputs" / "data.pt")
    monkeypatch.chdir(tmp_path)
    code, uri = _search(tmp_path, "--set", "task.name=conftest:make_file_task",
                        "--set", "task.options={data: inputs/data.pt}", "--set", "space.freeze_stop.high=3")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert children and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.params["task.options.data"] == str(tmp_path / "inputs" / "data.pt")


def test_a_storage_uri_keeps_checkpoints_behind_rays_filesystem_layer(ray_runtime, tmp_path):
    # file:// goes through the same pyarrow filesystem path as s3:// or gs://: the recommended model's checkpoint
    # is read with Checkpoint.as_directory(), and trials cache prefixes for themselves only
    code, uri = _search(tmp_path, "--storage-path", f"file://{tmp_path / 'remote'}", "--set", "space.freeze_stop.low=2")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert MlflowClient(tracking_uri=uri).get_run(parent.info.run_id).data.tags["recommended_model_uri"]
    assert {c.data.tags["prefix_cache"] for c in children} == {"on"}  # per trial: nothing shared through a URI
    assert any((tmp_path / "remote").iterdir()) and not (tmp_path / "remote" / "prefix_cache").exists()


def test_a_trial_that_ran_its_own_searched_epochs_did_not_stop_early(ray_runtime, tmp_path):
    code, uri = _search(tmp_path, "--set", "search.scheduler=fifo", "--set", "search.num_samples=6",
                        "--set", "space.epochs={type: choice, values: [1, 2]}")
    assert code == 0
    _, children = _runs(uri, "digits_freeze")
    assert {c.data.params["epochs"] for c in children} == {"1", "2"}, "both must be sampled to mean anything"
    assert all(c.data.tags["stopped_early"] == "False" for c in children)
    assert all(c.data.tags["epochs_run"] == c.data.params["epochs"] for c in children)


def test_a_trial_restarted_one_checkpoint_early_is_tagged_and_logs_no_epoch_twice(tmp_path):
    # Tune registers a reported checkpoint after the result's callbacks: a worker killed in between restarts from
    # the checkpoint before, and its first result replays an epoch MLflow already holds.
    from types import SimpleNamespace

    from tune.config import TrainConfig
    from tune.search import _MlflowTrials
    from tune.tracking import SearchTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "replay")
    tracker.start_search("search", {}, {})
    callback = _MlflowTrials(tracker, TrainConfig(epochs=4), ["freeze_stop"])
    trial = SimpleNamespace(trial_id="t1", config={"freeze_stop": 1})

    def result(epoch: int, since_restore: int, score: float) -> dict:
        return {"epoch": epoch, "iterations_since_restore": since_restore, "score": score, "freeze_start": 0,
                "freeze_stop": 1, "trainable_params": 10, "frozen_params": 5, "frozen_flops_share": 0.25}

    callback.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        callback.on_trial_result(0, [], trial, result(epoch, epoch, 0.1 * epoch))
    for since_restore, epoch in enumerate((2, 3, 4), start=1):  # restored from epoch 1's checkpoint
        callback.on_trial_result(0, [], trial, result(epoch, since_restore, 0.5))
    callback.on_trial_complete(0, [], trial)

    run = MlflowClient(tracking_uri=uri).get_run(callback.run_ids["t1"])
    assert run.data.tags["resumed_at_epoch"] == "2"
    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "score")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.5), (4, 0.5)]
    assert run.info.status == "FINISHED" and run.data.tags["stopped_early"] == "False"
