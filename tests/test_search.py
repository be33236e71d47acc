"""Real searches: a local Ray runtime, a real sqlite MLflow store, the CLI end to end."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import free_port, most_open_at_once, parent_and_children
from mlflow.tracking import MlflowClient

import run_search
from tune import cluster, search
from tune.config import ConfigError, ReportConfig, load_config, parse_overrides
from tune.trial import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
# the yolo spaces need the yolo extra and a data set: tests/test_yolo.py runs them on synthetic data
# and the image and text spaces need data of a user's: tests/test_image.py and test_text.py run them on their own
SPACES = sorted(p for p in (ROOT / "search_spaces").glob("*.yaml")
                if not p.name.startswith(("yolo", "image", "text")))


def _search(tmp_path: Path, *args: str) -> tuple[int, str]:
    """A smoke search; without the confirmation unless ``args`` ask for it (default_smoke does)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    confirm = () if "--confirm" in args else ("--confirm", "0")
    code = run_search.main(["--smoke-test", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
                            "--report-dir", str(tmp_path / "reports"), *confirm, *args])
    return code, uri


def _runs(uri: str, experiment: str) -> tuple[object, list]:
    return parent_and_children(uri, experiment)


@pytest.fixture(scope="module")
def default_smoke(ray_runtime, tmp_path_factory):
    """The default space's smoke test with a confirmation of its top 2 candidates (2 seeds each): one search that
    the tests of the whole path share."""
    tmp_path = tmp_path_factory.mktemp("default")
    code, uri = _search(tmp_path, "--confirm", "2", "--confirm-top", "2")
    return code, uri, tmp_path


def _phase(children: list, phase: str) -> list:
    return [c for c in children if c.data.tags.get("phase") == phase]


def test_smoke_search_logs_parent_and_nested_children_with_per_epoch_metrics(default_smoke):
    code, uri, _ = default_smoke
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    client = MlflowClient(tracking_uri=uri)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.num_samples"] == "4" and parent.data.params["train.epochs"] == "2"
    # the space as written: cut-point names, not the block indices they resolve to
    assert (parent.data.params["space.freeze_stop.low"], parent.data.params["space.freeze_stop.high"]) == (
        "none", "all_but_head")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "digits_freeze.yaml" in artifacts
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{n}" for n in ("report.txt", "summary.md", "frontier.png", "score_by_epoch.png",
                                    "resources_by_range.png")} <= report_files
    # the task's data as MLflow datasets: the parent every split, each trial what it trained and validated on
    def datasets(run) -> dict[str, tuple[str, str]]:
        return {next(t.value for t in d.tags if t.key == "mlflow.data.context"): (d.dataset.name, d.dataset.digest)
                for d in run.inputs.dataset_inputs}

    logged = datasets(parent)
    assert {k: v[0] for k, v in logged.items()} == {"training": "digits-train", "validation": "digits-val",
                                                    "test": "digits-test"}
    search_runs = _phase(children, "search")
    assert all(datasets(c) == {k: logged[k] for k in ("training", "validation")} for c in search_runs)
    # the smoke test's first trials: no freeze, all but the head and a middle depth (the sampler draws the fourth)
    assert {"0", "4", "7"} <= {c.data.params["freeze_stop"] for c in search_runs}
    # the parent holds MLflow's own system metrics of the driver's machine, sampled while the search ran
    assert client.get_metric_history(parent.info.run_id, "system/cpu_utilization_percentage")
    confirm_runs = _phase(children, "confirm")  # by default: each candidate with 2 fresh seeds (smoke)
    assert len(_phase(children, "search")) == 4 and confirm_runs and len(confirm_runs) % 2 == 0
    for child in children:
        assert child.info.status == "FINISHED"
        params = child.data.params
        assert {"freeze_stop", "lr", "epochs", "frozen_params", "trainable_params", "frozen_flops_share",
                "freeze_range"} <= set(params)
        assert params["freeze_range"] == f"[0, {params['freeze_stop']})"
        epochs_run = int(child.data.tags["epochs_run"])
        assert 1 <= epochs_run <= 2 if child.data.tags["phase"] == "search" else epochs_run == 2
        for key in METRIC_KEYS:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, epochs_run + 1)), key
        # system metrics, sampled in the trial's Ray worker by MLflow's monitors, logged per epoch to its run
        for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, epochs_run + 1)), key
        assert child.data.metrics["system/system_memory_usage_megabytes"] > 0
        # its best epoch's score, as the run's value for the UI's tables and charts
        best = max(m.value for m in client.get_metric_history(child.info.run_id, "score"))
        assert child.data.metrics["best_epoch_score"] == best
        assert [m.step for m in client.get_metric_history(child.info.run_id, "best_epoch_score")] == [epochs_run]
        assert child.data.tags["mem_source"] == "model"
        where = {"pid", "hostname", "node_ip", "node_id", "trial_cpus", "trial_gpus", "prefix_cache"}
        assert where <= set(child.data.tags)  # where and how it ran: tags, not metrics


def test_the_parent_counts_the_trial_epochs_of_search_and_confirmation_and_runs_carry_their_round(default_smoke):
    _, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")
    client = MlflowClient(tracking_uri=uri)

    def trained(runs: list) -> int:
        return sum(sum(1 for m in client.get_metric_history(c.info.run_id, "score") if m.step > 0) for c in runs)

    assert parent.data.metrics["trial_epochs_search"] == trained(_phase(children, "search")) > 0
    assert parent.data.metrics["trial_epochs_confirm"] == trained(_phase(children, "confirm")) > 0
    assert {c.data.tags["round"] for c in _phase(children, "confirm")} == {"1"}  # the smoke test's race: one round


def test_the_digits_default_keeps_its_pretrained_head(default_smoke):
    code, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")
    # MNIST's own head, pretrained for the same ten digits, is no new head: no probe replaces it
    assert "probe_score" not in parent.data.metrics
    assert {c.data.tags["head_start"] for c in children} == {"kept (the task's pretrained head)"}


@pytest.mark.slow
def test_every_trials_head_starts_from_the_one_probe_the_driver_fitted_and_the_report_names_it(ray_runtime,
                                                                                              tmp_path):
    # the digits task with a new head: the probe is the default start of every search and confirmation trial
    code, uri = _search(tmp_path, "--set", "task.options.new_head=true", "--confirm", "2", "--confirm-top", "2")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert _phase(children, "confirm")
    probe_score = parent.data.metrics["probe_score"]
    assert 0.5 < probe_score <= 1 and parent.data.metrics["probe_l2"] > 0
    # fitted once, in the driver: every trial and confirmation run was handed it (none fitted its own)
    assert {c.data.tags["head_start"] for c in children} == {"probe (the search's)"}
    assert {c.data.params["head_init"] for c in children} == {"probe"}
    # each run's epoch 0 is the probe on its network, before training: a score, no training time or memory
    client = MlflowClient(tracking_uri=uri)
    for child in children:
        history = {key: {m.step: m.value for m in client.get_metric_history(child.info.run_id, key)}
                   for key in ("score", "epoch_time_s", "peak_mem_mb", "train_time_s")}
        assert history["score"][0] == pytest.approx(probe_score, abs=0.01), child.info.run_name
        assert 0 not in history["epoch_time_s"] and 0 not in history["peak_mem_mb"]
        assert history["train_time_s"][0] == 0.0 and min(history["epoch_time_s"]) == 1
    [report] = (tmp_path / "reports").glob("digits_freeze-*/report.txt")
    text = report.read_text()
    assert f"A linear probe fitted to convergence on the frozen features scores {probe_score:.4f}: the heads" in text


def test_trials_run_in_parallel(default_smoke):
    _, uri, _ = default_smoke
    _, children = _runs(uri, "digits_freeze")
    assert most_open_at_once(children) >= 2


@pytest.mark.slow  # 19-30 s, for the fast suite's 2 minutes (resources and shares are checked fast without Ray)
def test_gpu_fractions_from_the_config_pack_trials_onto_logical_gpus(ray_runtime, tmp_path):
    # The session's Ray has 2 logical GPUs: 0.5 GPU and 0.5 CPU per trial lets 4 trials run at once.
    code, uri = _search(tmp_path, "--set", "search.gpus_per_trial=0.5", "--set", "search.cpus_per_trial=0.5",
                        "--set", "search.num_samples=4", "--set", "search.scheduler=fifo", "--set", "train.epochs=1",
                        "--set", "task.options.test_size=0")  # the test split's Ray task: the freeze-aware test
    assert code == 0
    _, children = _runs(uri, "digits_freeze")
    assert [c.data.tags["trial_gpus"] for c in children] == ["0.5"] * 4
    assert [c.data.tags["trial_cpus"] for c in children] == ["0.5"] * 4
    assert most_open_at_once(children) >= 3
    assert {c.data.tags["mem_source"] for c in children} == {"model"}  # a GPU share, but trained on the CPU


@pytest.mark.slow  # 10-15 s each: the fast suite's own searches cover the default space
@pytest.mark.parametrize("space", [p for p in SPACES if p.name != "digits_freeze.yaml"], ids=lambda p: p.name)
def test_every_search_space_file_smoke_runs(ray_runtime, tmp_path, space):
    code, uri = _search(tmp_path, "--space", str(space))
    assert code == 0
    import yaml

    parent, children = _runs(uri, yaml.safe_load(space.read_text())["name"])
    assert parent.info.status == "FINISHED"
    assert children and all(c.info.status == "FINISHED" for c in children)
    if "freeze_start" in yaml.safe_load(space.read_text())["space"]:  # a range space: both bounds sampled, in order
        starts = [int(c.data.params["freeze_start"]) for c in children]
        stops = [int(c.data.params["freeze_stop"]) for c in children]
        pairs = list(zip(starts, stops, strict=True))
        assert all(start <= stop for start, stop in pairs), pairs
        assert len(set(starts)) > 1, f"freeze_start was not sampled: {starts}"
        assert [c.data.params["freeze_range"] for c in children] == [f"[{a}, {b})" for a, b in pairs]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_search.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


# In a real process, as a user meets them. The cases that load the task (torch, seconds each) are slow: the same
# errors are tested in process in test_bad_input.py.
@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "train.epochs=0"], "error: train.epochs: got 0 (int); allowed: an integer >= 1"),
    pytest.param(["--set", "space.freeze_stop.high=12"],
                 "error: space.freeze_stop.high: got 12 (out of range); allowed:", marks=pytest.mark.slow),
    pytest.param(["--set", "space.freeze_stop.high=8"],
                 "error: space.freeze_stop: got 8 (freezes every block); allowed:", marks=pytest.mark.slow),
    pytest.param(["--set", "task.name=no_such.module:task"],
                 "error: task.name: got 'no_such.module:task' (ModuleNotFoundError", marks=pytest.mark.slow),
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


def test_help_shows_the_commands_in_its_usage(capsys):
    with pytest.raises(SystemExit) as exited:
        run_search.main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out.split("\n\n")[0]  # the usage lines, before the description
    for command in ("report", "layers", "submit"):
        assert f"freeze-search {command} " in usage, usage


@pytest.mark.slow
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
                            "--report-dir", str(tmp_path / "reports"), "--confirm", "0"])
    assert code == 0
    assert marker.exists()  # the crash happened
    _, children = _runs(uri, "flaky")
    [child] = children
    assert child.info.status == "FINISHED"
    assert child.data.tags["resumed_at_epoch"] == "2"  # it went on from the epoch-1 checkpoint, not from zero
    history = MlflowClient(tracking_uri=uri).get_metric_history(child.info.run_id, "score")
    # one MLflow run, no epoch logged twice (epoch 0: the head's start, the probe, before training)
    assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]


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
        # what the documented view (docs/mlflow.md) reads: the search's trials by filter, each with its freeze range,
        # the metrics its charts plot, its datasets; the parent's summary; the registered model by its alias
        trials = _get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [parent.info.experiment_id],
                                                              "filter": "tags.phase = 'search'"})["runs"]
        assert len(trials) == 4
        for run in trials:
            assert "freeze_range" in {p["key"] for p in run["data"]["params"]}
            charted = {"best_epoch_score", "epoch_time_s", "peak_mem_mb", "score"}
            assert charted <= {m["key"] for m in run["data"]["metrics"]}
            assert {d["dataset"]["name"] for d in run["inputs"]["dataset_inputs"]} == {"digits-train", "digits-val"}
        parent_run = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={parent.info.run_id}")["run"]
        assert {"best_score", "recommended_score", "test_score", "recommended_epoch_time_s"} <= {
            m["key"] for m in parent_run["data"]["metrics"]}
        alias = _get(f"{base}/api/2.0/mlflow/registered-models/alias?name=digits_freeze&alias=smoke")
        assert alias["model_version"]["run_id"] == parent.info.run_id
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
    client = MlflowClient(tracking_uri=uri)
    # registered: one model per experiment; a smoke test's version has the alias `smoke` and leaves
    # `recommended` (a real search's) alone
    assert parent.data.tags["registered_model_uri"] == "models:/digits_freeze@smoke"
    version = client.get_model_version_by_alias("digits_freeze", "smoke")
    assert version.run_id == parent.info.run_id
    assert "recommended" not in client.get_registered_model("digits_freeze").aliases
    model = mlflow.pytorch.load_model(parent.data.tags["registered_model_uri"])
    logged = mlflow.pytorch.load_model(parent.data.tags["recommended_model_uri"])
    pairs = zip(model.state_dict().values(), logged.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    trial = next(c for c in children if c.data.tags["ray.trial_id"] == parent.data.tags["recommended_trial"])
    # each trial's run is named by what it froze and with what; the trial id is its tag
    assert all(re.fullmatch(r"\[\d+, \d+\) lr=[\d.e-]+( seed=\d+)?", c.info.run_name) for c in children), \
        [c.info.run_name for c in children]
    best = max(m.value for m in client.get_metric_history(trial.info.run_id, "score"))
    task = make_task(labels_per_class=10, val_size=1000)
    with torch.no_grad():
        assert classification_metrics(model, *task.val_data)["val_accuracy"] == pytest.approx(best, abs=1e-9)


def test_the_registered_model_predicts_digit_names_from_scikit_learns_raw_arrays(default_smoke):
    """What a user takes home: the registered model with its class names and its preprocessing (the 0-16 grey levels
    scaled and upsampled as the trials saw them), labelling raw ``load_digits().images`` as well as its trial
    scored them."""
    from sklearn.datasets import load_digits

    import tune
    from tune.tasks.digits import few_label_split

    _, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")
    model = tune.load_model(parent.data.tags["registered_model_uri"], tracking_uri=uri)
    assert model.classes == tuple("0123456789") and "load_digits().images" in model.inputs
    digits = load_digits()
    _, val_index, _ = few_label_split(torch.as_tensor(digits.target), 10, 1000, 0, 500)
    raw, truth = digits.images[val_index.numpy()], [str(t) for t in digits.target[val_index.numpy()]]
    predicted = model.predict(raw)
    assert all(isinstance(label, str) for label in predicted)
    trial = next(c for c in children if c.data.tags["ray.trial_id"] == parent.data.tags["recommended_trial"])
    best = max(m.value for m in MlflowClient(tracking_uri=uri).get_metric_history(trial.info.run_id, "score"))
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth) == pytest.approx(best, abs=1e-9)
    assert model.predict(raw[0]) == predicted[:1]  # one image alone
    assert model.predict_proba(raw[:3]).sum(dim=1).allclose(torch.ones(3))


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


@pytest.mark.slow
def test_multi_objective_search_runs_every_trial_to_the_end_and_reports_that_frontier(ray_runtime, tmp_path,
                                                                                   capsys):
    code, uri = _search(tmp_path, "--set", "search.objectives={score: max, peak_mem_mb: min}")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert json.loads(parent.data.tags["freeze_search.objectives"]) == [["score", "max"], ["peak_mem_mb", "min"]]
    assert all(c.data.tags["stopped_early"] == "False" for c in children)  # FIFO: ASHA would bias the front
    assert "Frontier over score (max), peak_mem_mb (min)" in capsys.readouterr().out


@pytest.mark.slow  # 13 s; sharing prefixes between trials is tested without Ray in test_train.py
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


def test_layers_opens_with_a_header_naming_the_task_and_its_options(capsys):
    assert run_search.main(["layers", "--set", "task.options.labels_per_class=5"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "task digits, options: labels_per_class=5, val_size=1000, test_size=500"


@pytest.mark.slow
def test_time_budget_stops_the_search_cleanly(ray_runtime, tmp_path, capsys):
    code, uri = _search(tmp_path, "--set", "search.num_samples=40", "--set", "train.epochs=10", "--time-budget", "6")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert parent.info.status == "FINISHED"
    assert len(children) < 40  # later trials never started
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert "the time budget of 6 s stopped the search" in capsys.readouterr().out


def test_confirm_reruns_the_top_ranked_candidates_with_fresh_seeds_and_recommends_the_confirmed_one(default_smoke):
    from tune import report, tracking

    _, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")
    confirm_runs = _phase(children, "confirm")
    by_candidate: dict[str, list[str]] = {}
    for run in confirm_runs:
        by_candidate.setdefault(run.data.tags["candidate"], []).append(run.data.params["seed"])
    assert 1 <= len(by_candidate) <= 2 and all(sorted(seeds) == ["1", "2"] for seeds in by_candidate.values())
    searched = {c.data.tags["ray.trial_id"]: c for c in _phase(children, "search")}
    for run in confirm_runs:
        source = searched[run.data.tags["candidate"]]
        assert run.data.params["freeze_stop"] == source.data.params["freeze_stop"]
        assert run.data.params["lr"] == source.data.params["lr"]
    # the candidates: the best score's range, then the cheapest ranges near it (report.candidates), up to 2
    records = tracking.fetch_trials(uri, parent.info.run_id)
    expected = report.candidates([r for r in records if "candidate" not in r.tags], ReportConfig(),
                                 ["freeze_stop", "lr"], top=2)
    assert set(by_candidate) == set(expected)
    best = max((r for r in report.summarise(records) if r.candidate is None), key=lambda r: r.score)
    assert best.name in by_candidate
    # the parent's recommendation is the confirmed choice, judged on the confirmation runs alone
    confirmed = report.confirmed([r for r in report.summarise(records) if r.candidate], 0.01, "epoch_time_s").chosen
    assert parent.data.tags["recommended_trial"] == confirmed.name
    assert parent.data.tags["recommended_freeze_range"] == searched[confirmed.name].data.params["freeze_range"]
    # scored once on the test split: the confirmed candidate's runs, and no other run
    tested = {c.data.tags["ray.trial_id"] for c in children if "test_score" in c.data.metrics}
    assert tested == set(confirmed.runs) and len(tested) == 2
    # CPU trials on one machine: scored in the driver's process, with the task it has (a Ray task is for clusters
    # and GPU trials: test_freeze_aware_gpus_give_deeper_freezes_a_smaller_share, test_cluster)
    where = {(c.data.tags["test_hostname"], c.data.tags["test_pid"]) for c in children
             if "test_score" in c.data.metrics}
    assert where == {(socket.gethostname(), str(os.getpid()))}
    # and the runs scored on it have the test split among their MLflow datasets, the others not
    with_test = {c.data.tags["ray.trial_id"] for c in children
                 if any(d.dataset.name == "digits-test" for d in c.inputs.dataset_inputs)}
    assert with_test == tested
    test_scores = [c.data.metrics["test_score"] for c in children if "test_score" in c.data.metrics]
    metrics = parent.data.metrics  # the search in a few numbers, for MLflow's runs table and charts
    assert metrics["test_score"] == pytest.approx(sum(test_scores) / 2)
    assert metrics["recommended_score"] == pytest.approx(confirmed.mean)
    assert metrics["recommended_score_low"] < confirmed.mean < metrics["recommended_score_high"]
    assert metrics["best_score"] == max(r.score for r in report.summarise(records) if r.candidate is None)
    assert metrics["trials_finished"] == 4 and metrics["trials_failed"] == 0
    assert {"recommended_epoch_time_s", "recommended_peak_mem_mb", "trials_stopped_early"} <= set(metrics)


def test_the_recommendation_follows_the_confirmed_choice_not_the_search_trial(tmp_path):
    """Logged by hand (no Ray): the search recommends the cheap trial, its confirmation does not hold up, so the
    report, the parent's tags and the logged model's trial are the expensive one."""
    from tune.records import search_tags
    from tune.study import rebuild_report
    from tune.tracking import SearchTracker
    from tune.trial_runs import TrialRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "confirmed")
    tracker.start_search("search", {"name": "confirmed", "report.tolerance": "0.01", "report.confirm_seeds": "3",
                                    "report.confirm_max_seeds": "3"},
                         search_tags(["freeze_stop"], [("score", "max")]))
    runs = TrialRuns(tracker, {"epochs": 1}, 1)

    def trial(name: str, stop: int, score: float, epoch_time: float, **tags: str) -> None:
        result = {"epoch": 1, "score": score, "epoch_time_s": epoch_time, "peak_mem_mb": 8.0 - stop,
                  "train_time_s": epoch_time, "freeze_start": 0, "freeze_stop": stop, "trainable_params": 1,
                  "frozen_params": 1, "frozen_flops_share": 0.5}
        runs.result(name, {"freeze_stop": stop, "seed": tags.pop("seed", 0)}, tags, result, first_since_restore=False)
        runs.complete(name, {"freeze_stop": stop}, tags)

    trial("expensive", 0, 0.950, 2.0, phase="search")
    trial("cheap", 4, 0.945, 1.0, phase="search")  # within 0.01: the search's recommendation
    for seed, (high, low) in enumerate([(0.950, 0.900), (0.951, 0.901), (0.949, 0.899)], start=1):
        trial(f"e{seed}", 0, high, 2.0, phase="confirm", candidate="expensive", seed=seed)
        trial(f"c{seed}", 4, low, 1.0, phase="confirm", candidate="cheap", seed=seed)
    tracker.finish_search("FINISHED")

    lines: list[str] = []
    built = rebuild_report(uri, experiment="confirmed", report_dir=tmp_path / "reports", say=lines.append).report
    assert built.recommendation.trial.name == "cheap" and built.confirmed_choice.name == "expensive"
    assert built.chosen.name == "expensive"  # the trial whose checkpoint is logged as the recommended model
    tags = MlflowClient(tracking_uri=uri).get_run(tracker.parent_run_id).data.tags
    assert tags["recommended_trial"] == "expensive" and tags["recommended_freeze_range"] == "[0, 0)"
    # the race's budget, 3 seeds, was reached: the expensive candidate is proven within (the cheap one is 0.05 below)
    assert tags["recommendation_proven"] == "true" and tags["race_ended"] == "proven"
    text = "\n".join(lines)
    assert "Single-trial pick (the confirmation decides): freeze [0, 4)" in text and "Confirmation (fresh seeds" in text
    assert ("Recommendation: freeze [0, 0) (no other searched values), proven within the tolerance (0.01) of the best "
            "candidate: mean score 0.9500" in text)
    assert "chosen after the race ran" not in text
    # a tolerance chosen afterwards is said to be no part of the promise; the parent's tags keep the search's answer
    rebuilt = rebuild_report(uri, experiment="confirmed", tolerance=0.1, report_dir=tmp_path / "again",
                             say=lambda line: None)
    assert "The tolerance 0.1 was chosen after the race ran (it ran for 0.01)" in rebuilt.text
    assert MlflowClient(tracking_uri=uri).get_run(tracker.parent_run_id).data.tags["recommendation_proven"] == "true"


def _space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _run_space(tmp_path: Path, text: str) -> tuple[int, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search.main(["--space", str(_space_file(tmp_path, text)), "--tracking-uri", uri,
                            "--storage-path", str(tmp_path / "ray"), "--report-dir", str(tmp_path / "reports")])
    return code, uri


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    # trials with GPUs: the test split is scored in a Ray task with a trial's GPU, not in the driver's process
    [tested] = [c for c in children if "test_score" in c.data.metrics]
    assert 0 < tested.data.metrics["test_score"] <= 1 and tested.data.tags["test_pid"] != str(os.getpid())


def test_concurrency_counts_freeze_aware_shares_at_the_smallest(ray_runtime):
    cfg = load_config(ROOT / "search_spaces" / "digits_freeze.yaml", parse_overrides(
        ["search.gpus_per_trial=1.0", "search.cpus_per_trial=0.25", "search.num_samples=20"]))
    assert search.concurrency(cfg) == 2  # 2 logical GPUs, a whole one per trial
    assert search.concurrency(cfg, smallest_gpu_share=0.25) == 8  # 8 of the deepest freezes fit, CPUs allow 8


def _resources_cfg(*overrides: str):
    return load_config(ROOT / "search_spaces" / "digits_freeze.yaml", parse_overrides(list(overrides)))


@pytest.mark.parametrize(("overrides", "message"), [
    (["search.gpus_per_trial=3"], r"^search.gpus_per_trial: got 3 \(the largest node has 2 GPUs\)"),
    (["search.cpus_per_trial=8"], r"^search.cpus_per_trial: got 8 \(the largest node has 2 CPUs\)"),
    (["search.cpus_per_trial=2", "search.gpus_per_trial=0"], None),  # the whole node: fits
    (["train.device=cuda"], r"^train.device: got 'cuda' \(trials get no GPU: search.gpus_per_trial is 0\)"),
    (["train.device=cuda:1", "search.gpus_per_trial=1"],
     r"^train.device: got 'cuda:1'; allowed: cuda or cuda:N with N < 1"),
    (["train.device=cuda", "search.gpus_per_trial=0.5"],
     r"^train.device: got 'cuda' \(torch here has no CUDA device\)"),
])
def test_requests_no_node_can_meet_are_refused_here_before_any_trial(ray_runtime, overrides, message):
    # the session's Ray: one node of 2 CPUs and 2 logical GPUs, and torch without CUDA
    cfg = _resources_cfg(*overrides)
    if message is None:
        assert cluster.check_resources(cfg, on_cluster=False) == []
        return
    with pytest.raises(ConfigError, match=message):
        cluster.check_resources(cfg, on_cluster=False)


def test_on_a_cluster_a_shortfall_is_a_warning_an_autoscaler_may_answer(ray_runtime):
    warnings = cluster.check_resources(_resources_cfg("search.gpus_per_trial=3", "search.cpus_per_trial=1"),
                                      on_cluster=True)
    assert len(warnings) == 1 and warnings[0].startswith("search.gpus_per_trial is 3 but no node of the cluster")
    assert warnings[0].endswith("trials wait until such a node joins (an autoscaler)")
    both = cluster.check_resources(_resources_cfg("search.cpus_per_trial=16", "search.gpus_per_trial=4"),
                                  on_cluster=True)
    assert [w.split(" is ")[0] for w in both] == ["search.cpus_per_trial", "search.gpus_per_trial"]
    assert both[0].startswith("search.cpus_per_trial is 16 but no node of the cluster can give that now (the largest "
                              "node has 2 CPUs)")


@pytest.mark.slow
def test_a_storage_uri_keeps_checkpoints_behind_rays_filesystem_layer(ray_runtime, tmp_path):
    # file:// goes through the same pyarrow filesystem path as s3:// or gs://: the recommended model's checkpoint
    # is read with Checkpoint.as_directory(), and trials cache prefixes for themselves only
    code, uri = _search(tmp_path, "--storage-path", f"file://{tmp_path / 'remote'}", "--set", "space.freeze_stop.low=2")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert MlflowClient(tracking_uri=uri).get_run(parent.info.run_id).data.tags["recommended_model_uri"]
    assert {c.data.tags["prefix_cache"] for c in children} == {"on"}  # per trial: nothing shared through a URI
    assert any((tmp_path / "remote").iterdir()) and not (tmp_path / "remote" / "prefix_cache").exists()


@pytest.mark.slow
def test_a_trial_that_ran_its_own_searched_epochs_did_not_stop_early(ray_runtime, tmp_path):
    code, uri = _search(tmp_path, "--set", "search.scheduler=fifo", "--set", "search.num_samples=6",
                        "--set", "space.epochs={type: choice, values: [1, 2]}")
    assert code == 0
    _, children = _runs(uri, "digits_freeze")
    assert {c.data.params["epochs"] for c in children} == {"1", "2"}, "both must be sampled to mean anything"
    assert all(c.data.tags["stopped_early"] == "False" for c in children)
    assert all(c.data.tags["epochs_run"] == c.data.params["epochs"] for c in children)


def _trial_runs(tmp_path: Path, epochs: int = 4):
    from tune.tracking import SearchTracker
    from tune.trial_runs import TrialRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "by-hand")
    tracker.start_search("search", {}, {})
    return TrialRuns(tracker, {"epochs": epochs, "lr": 0.001}, epochs), MlflowClient(tracking_uri=uri)


def _result(epoch: int, score: float, **extra) -> dict:
    return {"epoch": epoch, "score": score, "freeze_start": 0, "freeze_stop": 1, "trainable_params": 10,
            "frozen_params": 5, "frozen_flops_share": 0.25, "mem_source": "model", **extra}


def test_a_trial_restarted_one_checkpoint_early_is_tagged_and_logs_no_epoch_twice(tmp_path):
    # Tune registers a reported checkpoint after the result's callbacks: a worker killed in between restarts from
    # the checkpoint before, and its first result replays an epoch MLflow already holds. Driven by hand, no Ray.
    runs, client = _trial_runs(tmp_path)
    params, tags = {"freeze_stop": 1}, {"phase": "search"}
    runs.run_id("t1", params, tags)
    for epoch in (1, 2):
        runs.result("t1", params, tags, _result(epoch, 0.1 * epoch), first_since_restore=epoch == 1)
    for since_restore, epoch in enumerate((2, 3, 4), start=1):  # restored from epoch 1's checkpoint
        runs.result("t1", params, tags, _result(epoch, 0.5), first_since_restore=since_restore == 1)
    assert runs.complete("t1", params, tags) == "best 0.5000 at epoch 3 (4 epochs run)"  # the earliest of a tie

    run = client.get_run(runs.run_ids["t1"])
    assert run.data.tags["resumed_at_epoch"] == "2"
    history = client.get_metric_history(run.info.run_id, "score")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2), (3, 0.5), (4, 0.5)]
    assert run.info.status == "FINISHED" and run.data.tags["stopped_early"] == "False"
    assert run.data.tags["mem_source"] == "model" and "mem_source" not in run.data.metrics  # a tag, not a metric
    assert run.data.params["freeze_range"] == "[0, 1)" and run.data.params["lr"] == "0.001"


def test_a_trial_run_is_named_by_its_freeze_and_values_and_the_console_line_says_how_far(tmp_path):
    from tune.tracking import fetch_trials
    from tune.trial_runs import TrialRuns

    runs, client = _trial_runs(tmp_path)
    runs = TrialRuns(runs.tracker, {"epochs": 4}, 4, searched=["freeze_stop", "lr"])
    tags = {"phase": "search"}
    for trial_id, score in (("t1", 0.5), ("t2", 0.75)):
        runs.result(trial_id, {"freeze_stop": 1, "lr": 0.0012}, tags, _result(1, score), first_since_restore=False)
    assert runs.progress("t1") == "; best so far 0.7500 (trial t2)"
    runs.result("t3", {"freeze_stop": 1, "lr": 0.0012, "seed": 2}, {"phase": "confirm", "candidate": "t1"},
                _result(1, float("nan")), first_since_restore=False)  # a NaN score is never the best
    assert runs.progress("t3") == "; best so far 0.7500 (trial t2)"
    run = client.get_run(runs.run_ids["t1"])
    assert run.info.run_name == "[0, 1) lr=0.0012" and run.data.tags["ray.trial_id"] == "t1"
    assert client.get_run(runs.run_ids["t3"]).info.run_name == "[0, 1) lr=0.0012 seed=2"
    line = runs.complete("t1", {"freeze_stop": 1}, tags)
    assert line == "best 0.5000 at epoch 1 (1 epoch run, stopped early by ASHA)"
    assert runs.ended == {"t1"}
    records = fetch_trials(runs.tracker.tracking_uri, runs.tracker.parent_run_id)
    assert {r.name for r in records} == {"t1", "t2", "t3"}  # the report names trials by their id


def test_a_finished_trials_line_gives_its_best_score_with_its_epoch_and_never_compares_it_with_itself(tmp_path):
    """A trial's console line: its best epoch's score and which epoch that was (not its last epoch's score beside the
    best so far), and the best so far of the other trials, or that this one is the best so far."""
    runs, _ = _trial_runs(tmp_path)
    tags = {"phase": "search"}
    for epoch, score in enumerate((0.5, 0.92, 0.67), start=1):  # its last epoch is not its best
        runs.result("t1", {}, tags, _result(epoch, score), first_since_restore=False)
    assert runs.complete("t1", {}, tags) == "best 0.9200 at epoch 2 (3 epochs run, stopped early by ASHA)"
    assert runs.progress("t1") == "; the best so far"
    runs.result("t2", {}, tags, _result(1, 0.8), first_since_restore=False)
    assert runs.progress("t2") == "; best so far 0.9200 (trial t1)"
    runs.result("t3", {}, tags, _result(1, 0.92), first_since_restore=False)
    assert runs.progress("t3") == "; the best so far"  # a tie with the best


def test_trial_runs_tag_divergence_early_stops_against_searched_epochs_and_failures(tmp_path):
    runs, client = _trial_runs(tmp_path, epochs=4)
    tags = {"phase": "search"}
    runs.result("diverged", {}, tags, _result(1, 0.2, diverged=1), first_since_restore=False)
    assert runs.complete("diverged", {}, tags) == "diverged (loss not finite) at epoch 1"
    runs.result("asha", {}, tags, _result(1, 0.3), first_since_restore=False)
    assert runs.complete("asha", {}, tags).endswith("stopped early by ASHA)")
    runs.result("short", {"epochs": 1}, tags, _result(1, 0.3), first_since_restore=False)  # epochs searched: 1
    assert not runs.complete("short", {"epochs": 1}, tags).endswith("ASHA)")
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  File x\nMemoryError: too big\n"
                          "RuntimeError: out of memory at epoch 1: MemoryError: too big\n")
    runs.result("oom", {}, tags, _result(1, 0.1), first_since_restore=False)
    reason = "RuntimeError: out of memory at epoch 1: MemoryError: too big"
    assert runs.error("oom", {}, tags, str(error_file)) == f"FAILED: {reason}"

    run = {name: client.get_run(runs.run_ids[name]) for name in ("diverged", "asha", "short", "oom")}
    assert run["diverged"].data.tags["diverged"] == "true" and run["diverged"].data.tags["diverged_at_epoch"] == "1"
    assert "stopped_early" not in run["diverged"].data.tags
    assert run["asha"].data.tags["stopped_early"] == "True" and run["short"].data.tags["stopped_early"] == "False"
    assert run["oom"].info.status == "FAILED"
    assert run["oom"].data.tags["failure_reason"].startswith("RuntimeError: out of memory at epoch 1: MemoryError")
    assert {r.info.status for name, r in run.items() if name != "oom"} == {"FINISHED"}


def test_a_trial_needs_its_cpus_and_gpus_on_one_node(monkeypatch):
    # a CPU node and a small GPU node: 4 CPUs and 1 GPU exist, but on no one node
    monkeypatch.setattr(cluster, "_nodes", lambda: [{"CPU": 8.0, "GPU": 0.0}, {"CPU": 2.0, "GPU": 1.0}])
    cfg = _resources_cfg("search.cpus_per_trial=4", "search.gpus_per_trial=1")
    with pytest.raises(ConfigError, match=r"^search.cpus_per_trial: got 4 \(no node has 4 CPUs and 1 GPUs\); "
                                          r"allowed: at most 2, the CPUs of the largest node with 1 GPUs"):
        cluster.check_resources(cfg, on_cluster=False)
    assert cluster.check_resources(_resources_cfg("search.cpus_per_trial=2", "search.gpus_per_trial=1"),
                                  on_cluster=False) == []


def test_each_search_registers_a_version_and_the_alias_moves_to_the_latest(tmp_path):
    import mlflow.pytorch
    import torch

    from tune.tracking import SearchTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    code = tmp_path / "code"  # the package a logged model carries: here an empty one (torch.nn.Linear needs none)
    code.mkdir()
    parents = []
    for value in (1.0, 2.0):  # two searches of one experiment, each with its own recommended model
        tracker = SearchTracker(uri, "by-hand")
        parents.append(tracker.start_search("search", {}, {}))
        module = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(module.weight, value)
        registered = tracker.register_model(parents[-1], *tracker.log_model(parents[-1], module, None, code))
        assert registered == "models:/by-hand@recommended"
        tracker.finish_search("FINISHED")
    versions = client.search_model_versions("name = 'by-hand'")
    assert sorted((int(v.version), v.run_id) for v in versions) == [(1, parents[0]), (2, parents[1])]
    assert client.get_model_version_by_alias("by-hand", "recommended").version == 2
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model(registered).weight.eq(2.0).all()


# Each worker imports tune.tracking once, then opens a tracker on every store path it reads, as a search's driver
# does first: the workers get each path at the same moment, so they race to create the store's tables.
_OPEN_STORE = """
import sys
from tune.tracking import SearchTracker

print("ready", flush=True)
for line in sys.stdin:
    try:
        tracker = SearchTracker("sqlite:///" + line.strip(), "at-once")
        print("ok", tracker.experiment_id, flush=True)
    except Exception as err:
        print("failed", type(err).__name__, " ".join(str(err).split())[:200], flush=True)
"""


@pytest.mark.slow  # three processes importing MLflow at once, three times: about 10-30 s
def test_searches_started_at_once_on_a_new_sqlite_store_create_it_once_and_share_the_experiment(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    workers = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env, cwd=tmp_path) for _ in range(3)]
    try:
        assert all(worker.stdout.readline().strip() == "ready" for worker in workers)
        for attempt in range(3):  # a new store each time
            database = tmp_path / f"m{attempt}.db"
            for worker in workers:
                worker.stdin.write(f"{database}\n")
            for worker in workers:
                worker.stdin.flush()
            answers = [worker.stdout.readline().split(maxsplit=1) for worker in workers]
            assert [answer[0] for answer in answers] == ["ok"] * 3, answers
            assert len({answer[1] for answer in answers}) == 1, answers  # one experiment, not one each
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(timeout=60)


@pytest.mark.slow
def test_a_registry_that_refuses_the_model_fails_no_search(ray_runtime, tmp_path, monkeypatch, capsys):
    """The search and its logged model stand; the refusal is one warning line, and no alias tag is written."""
    from mlflow.exceptions import MlflowException

    from tune.tracking import SearchTracker

    def refuse(self, *args, **kwargs):
        raise MlflowException("registered models are read-only here")

    monkeypatch.setattr(SearchTracker, "register_model", refuse)
    code, uri = _search(tmp_path, "--num-samples", "2")
    assert code == 0
    parent, _ = _runs(uri, "digits_freeze")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["recommended_model_uri"].startswith("models:/m-")
    assert "registered_model_uri" not in parent.data.tags
    err = capsys.readouterr().err
    assert "warning: the model registry did not take the recommended model (registered models are read-only here)" \
        in err


@pytest.mark.slow
def test_one_trial_at_a_time_a_seed_repeats_the_whole_search(ray_runtime, tmp_path):
    """With search.max_concurrent_trials 1, the sampler and ASHA see the results in one order, so a second search
    with the same seed proposes the same trials, stops them at the same epochs with the same scores, and (with a
    cost that is counted, not timed) confirms and recommends the same; parallel trials finish in a timing-
    dependent order, and there the README says a seed does not repeat the search."""
    def trials(folder: Path) -> tuple[list, str]:
        folder.mkdir()
        code, uri = _search(folder, "--num-samples", "6", "--confirm", "2", "--confirm-top", "2",
                            "--set", "search.max_concurrent_trials=1", "--set", "report.cost=peak_mem_mb")
        assert code == 0
        parent, children = _runs(uri, "digits_freeze")
        client = MlflowClient(tracking_uri=uri)
        found = sorted((c.data.tags.get("phase"), c.data.params["freeze_stop"], c.data.params["lr"],
                        c.data.params.get("seed", ""),
                        tuple(m.value for m in sorted(client.get_metric_history(c.info.run_id, "score"),
                                                      key=lambda m: m.step)))
                       for c in children)
        return found, parent.data.tags["recommended_freeze_range"]

    first, second = trials(tmp_path / "a"), trials(tmp_path / "b")
    assert first == second
    assert len({t[4] for t in first[0]}) > 1  # the trials differ from each other: the comparison means something


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", []), ("2", [2]), ("3,1", [3, 1]), (" 1 , 0", [1, 0]), ("0,-1,1", [0]), ("1,foo,2", [1]),
    ("GPU-8f2e,1", ["GPU-8f2e", 1]), ("MIG-4a1b", ["MIG-4a1b"]),
])
def test_cuda_visible_devices_are_read_as_cuda_reads_them(value, expected):
    from tune.system_metrics import visible_gpus

    assert visible_gpus(value) == expected


def test_a_trials_gpu_metrics_are_its_own_devices_not_the_nodes(monkeypatch):
    """NVML lists every GPU of the node; a trial that Ray gave physical GPUs 2 and 0 reports those two, as gpu_0 and
    gpu_1 (torch's cuda:0 and cuda:1 in that process). NVML stands in here: this machine has no GPU."""
    import types

    import mlflow.system_metrics.metrics.gpu_monitor as gpu_monitor

    from tune.system_metrics import SystemSampler

    used_mb = {0: 100.0, 1: 200.0, 2: 300.0, 3: 400.0}  # each physical GPU's memory in use tells them apart

    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 4,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetHandleByUUID=lambda uuid: {"GPU-aa": 0, "GPU-cc": 2}[uuid],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=used_mb[h] * 1e6, total=1e12),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=10 * h),
        nvmlDeviceGetPowerUsage=lambda h: 1000.0 * h, nvmlDeviceGetEnforcedPowerLimit=lambda h: 100000.0)
    monkeypatch.setattr(gpu_monitor, "pynvml", fake, raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    def gpu_memory(visible: str | None) -> dict[str, float]:
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        found = SystemSampler(gpu=True).epoch()
        return {k: v for k, v in found.items() if k.endswith("_memory_usage_megabytes") and "gpu" in k}

    assert gpu_memory("2,0") == {"system/gpu_0_memory_usage_megabytes": 300.0,
                                 "system/gpu_1_memory_usage_megabytes": 100.0}
    assert gpu_memory("GPU-cc") == {"system/gpu_0_memory_usage_megabytes": 300.0}
    assert len(gpu_memory(None)) == 4  # no CUDA_VISIBLE_DEVICES: the process sees every GPU, and so does the trial


def _bad(problem: str = "FileNotFoundError: mydata") -> ConfigError:
    return ConfigError("task.options", {"data": "mydata"}, "options that point at readable data", problem=problem)


@pytest.mark.parametrize(("outcomes", "total", "stops"), [
    ([_bad(), _bad()], 4, True),  # the first two trials met the same bad input
    ([_bad()], 1, True),  # a search of one trial
    ([_bad()], 4, False),  # one trial alone may be its sampled params
    ([None, _bad(), _bad()], 4, False),  # a trial reported an epoch first: the input is fine
    ([_bad("a"), _bad("b")], 4, False),  # two different problems
    ([RuntimeError("out of memory"), _bad()], 4, False),  # a crash is not bad input
    ([RuntimeError("out of memory at epoch 1"), RuntimeError("out of memory at epoch 1")], 4, False),  # the config's
    ([MemoryError("cannot hold a batch"), MemoryError("cannot hold a batch")], 4, False),
    ([RuntimeError("boom"), RuntimeError("bang")], 4, False),  # two different crashes
])
def test_the_search_stops_when_its_first_trials_meet_the_same_config_error(outcomes, total, stops):
    import copy
    import pickle

    from tune import events

    verdict = events.BadInput(total)
    # Tune copies the run config's stopper and callbacks: in this process every copy is the one object
    assert copy.deepcopy(verdict) is verdict and pickle.loads(pickle.dumps(verdict)) is verdict
    for index, outcome in enumerate(outcomes):
        verdict.outcome(f"trial{index}", outcome)
    assert verdict.stop_all() is stops
    assert (str(verdict.error) == str(_bad())) if stops else verdict.error is None


def test_the_search_stops_when_its_first_trials_fail_with_the_same_exception_of_any_kind():
    from tune import events

    verdict = events.BadInput(4)
    missing = "[Errno 2] No such file or directory: 'pretrained.pt'"
    for index in range(2):
        verdict.outcome(f"trial{index}", FileNotFoundError(2, "No such file or directory", "pretrained.pt"))
    assert verdict.stop_all()
    assert str(verdict.error) == (f"trials: got {'FileNotFoundError: ' + missing!r} (the first trials failed alike; "
                                  "the search stopped); allowed: a task whose trials run where the driver's does "
                                  "(docs/your-task.md#what-a-trial-sees)")


def test_trials_that_all_fail_alike_stop_the_search_with_one_line_and_exit_2(ray_runtime, tmp_path, monkeypatch,
                                                                           capsys):
    import os

    import torch
    from conftest import make_tiny_task

    torch.save(make_tiny_task().train_data, tmp_path / "mydata")
    monkeypatch.chdir(tmp_path)
    # a bare 'mydata' the task does not declare a path stays a word: the trials find it because they work in the
    # driver's folder; then the user's loss fails in each of them alike
    code, uri = _search(tmp_path, "--set", "task.name=conftest:make_crashing_file_task",
                        "--set", f"task.options={{source: mydata, driver_pid: {os.getpid()}}}",
                        "--set", "space.freeze_stop.high=3", "--set", "search.num_samples=8")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(
        "error: trials: got \"RuntimeError: the user's loss cannot run here\" (the first trials failed alike")
    parent, children = _runs(uri, "digits_freeze")
    assert parent.info.status == "FAILED" and parent.data.tags["failure_reason"] == lines[0].removeprefix("error: ")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 2 and all(c.data.tags["failure_reason"] == "RuntimeError: the user's loss cannot run here"
                                    for c in failed)
    assert len(children) < 8 and {c.info.status for c in children} <= {"FAILED", "KILLED"}  # not all 8 ran into it


@pytest.mark.slow
@pytest.mark.parametrize(("task", "key", "data"), [("conftest:make_file_task", "data", "inputs/data.pt"),
                                                   ("conftest:make_declared_file_task", "source", "mydata")])
def test_a_relative_or_declared_bare_data_path_reaches_trials_in_their_own_folders(ray_runtime, tmp_path,
                                                                                  monkeypatch, task, key, data):
    import torch
    from conftest import make_tiny_task

    (tmp_path / "inputs").mkdir()
    torch.save(make_tiny_task().train_data, tmp_path / data)
    monkeypatch.chdir(tmp_path)
    code, uri = _search(tmp_path, "--set", f"task.name={task}", "--set", f"task.options={{{key}: {data}}}",
                        "--set", "space.freeze_stop.high=3")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert children and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.params[f"task.options.{key}"] == str(tmp_path / data)


@pytest.mark.parametrize("rungs", ["per_freeze_range", "shared"])
def test_asha_compares_a_trial_with_its_own_freeze_range_unless_rungs_are_shared(rungs):
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    cfg = load_config(ROOT / "search_spaces" / "digits_freeze.yaml", parse_overrides([
        "train.epochs=4", "search.grace_period=1", "search.reduction_factor=2", f"search.asha_rungs={rungs}"]))
    scheduler = search._scheduler(cfg)
    scheduler.set_search_properties("score", "max")
    decisions = {}
    # a deep fine-tune in its dip (range [0, 1)) against two all-but-head trials that sit at the probe ([0, 7))
    for name, stop, score in [("frozen1", 7, 0.9), ("frozen2", 7, 0.8), ("deep1", 1, 0.5), ("deep2", 1, 0.3)]:
        trial = SimpleNamespace(trial_id=name, config={"freeze_stop": stop, "lr": 1e-3})
        scheduler.on_trial_add(None, trial)
        # the start (epoch 0, a probe-started head before training) is never a rung
        assert scheduler.on_trial_result(None, trial, {"epoch": 0, "score": 0.0}) == TrialScheduler.CONTINUE
        decisions[name] = scheduler.on_trial_result(None, trial, {"epoch": 1, "score": score})
    stopped = {name for name, action in decisions.items() if action == TrialScheduler.STOP}
    # per range: the weaker of each range's two stops, and the better deep one goes on; shared: both deep ones stop
    assert stopped == ({"frozen2", "deep2"} if rungs == "per_freeze_range" else {"frozen2", "deep1", "deep2"})


def test_load_search_reads_the_search_back_as_the_api_result(default_smoke, tmp_path):
    """tune.load_search (freeze-search report's API): the search's trials, recommendation and model as MLflow holds
    them, in a SearchResult."""
    import tune
    from tune import tracking

    code, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")  # as the search left it, before load_search reads it
    result = tune.load_search("digits_freeze", tracking_uri=uri, report_dir=tmp_path)
    assert result.status == "FINISHED" and result.parent_run_id == parent.info.run_id
    assert sorted(t.name for t in result.trials) == sorted(c.data.tags[tracking.TRIAL_ID_TAG]
                                                           for c in _phase(children, "search"))
    rec = result.recommendation
    assert rec.freeze_range == parent.data.tags["recommended_freeze_range"]
    assert rec.trial.name == parent.data.tags["recommended_trial"]
    assert rec.seeds == 2 and rec.interval[0] <= rec.score <= rec.interval[1]  # the race's 2 seeds
    assert rec.test_score == pytest.approx(parent.data.metrics["test_score"])
    assert result.model_uri == parent.data.tags["registered_model_uri"]
    assert set(rec.params) == {"freeze_stop", "lr"} and isinstance(rec.params["lr"], float)
    assert {t.name for t in result.frontier} <= {t.name for t in result.trials}
    assert (result.report_dir / "report.txt").read_text().strip() == result.text.strip()


@pytest.mark.slow
def test_a_bf16_mixed_search_runs_on_the_cpu_and_logs_its_precision(ray_runtime, tmp_path):
    """train.precision=bf16-mixed on the CPU (autocast in bfloat16): the parent run's param, each trial run's tag,
    and a line of the report."""
    code, uri = _search(tmp_path, "--set", "train.precision=bf16-mixed", "--confirm", "0")
    assert code == 0
    parent, children = _runs(uri, "digits_freeze")
    assert parent.data.params["train.precision"] == "bf16-mixed"
    assert children and {c.data.tags["precision"] for c in children} == {"bf16-mixed"}
    report = next((tmp_path / "reports").glob("digits_freeze-*")) / "report.txt"
    assert "Trained in bf16-mixed (train.precision)" in report.read_text()


@pytest.mark.slow
def test_a_policy_search_names_each_trial_by_its_policy_in_mlflow_and_the_report(ray_runtime, tmp_path):
    """The digits_policy space's smoke test with 6 trials (freeze range, layer decay and thaw epoch searched together,
    its thaws kept: 4 epochs; two hard-freeze points first), confirmed: every trial run carries its policy
    (param, run name), the frozen share falls to 0 at a thaw, the parent names the recommended policy, the report's
    table is by policy."""
    code, uri = _search(tmp_path, "--space", "digits_policy", "--confirm", "2", "--confirm-top", "2", "--set",
                        "search.num_samples=6", "--set", "search.points_to_evaluate=[{layer_decay: 1.0, "
                        "unfreeze_epoch: 0}, {layer_decay: 1.0, unfreeze_epoch: 0}]")
    assert code == 0
    parent, children = _runs(uri, "digits_policy")
    client = MlflowClient(tracking_uri=uri)
    assert parent.data.params["train.epochs"] == "4"  # the smoke test's 2 epochs, raised to keep the thaw at 3
    labels, thawed = set(), []
    for child in _phase(children, "search"):
        params = child.data.params
        policy = params["policy"]
        labels.add(policy)
        assert child.info.run_name.startswith(policy + " lr=")
        assert policy.startswith(params["freeze_range"])
        assert ("decay" in policy) == (float(params["layer_decay"]) != 1.0)
        thaws = int(params["unfreeze_epoch"]) > 0 and params["freeze_range"] != "[0, 0)"
        assert (f"thaw@{params['unfreeze_epoch']}" in policy) == thaws
        shares = [m.value for m in client.get_metric_history(child.info.run_id, "epoch_frozen_flops_share")]
        if thaws and len(shares) == 4:
            assert shares[0] > 0 and shares[-1] == 0.0
            thawed.append(policy)
    assert any(label != label.split(")")[0] + ")" for label in labels)  # more than hard freezing was sampled
    hard = [c for c in _phase(children, "search") if c.data.params["policy"] == c.data.params["freeze_range"]]
    assert len(hard) >= 2  # the two points_to_evaluate given (a smoke test drops the space's own): hard freezes
    assert thawed  # a trial thawed and ran to its last epoch: its frozen share fell to 0
    assert parent.data.tags["recommended_policy"] in labels
    report = (next((tmp_path / "reports").glob("digits_policy-*")) / "report.txt").read_text()
    assert "By policy:" in report and "Frontier over score (max), train_time_s (min), peak_mem_mb (min)" in report
    assert f"Recommendation: freeze {parent.data.tags['recommended_policy']} " in report
