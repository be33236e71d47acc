"""The MLflow side of a search (tune.tracker.tracking): a registered model version per search and its alias, a registry
that refuses the model, the shared smoke search's recommended model loading back from MLflow and predicting
as its trial scored, and the printed `mlflow ui` command serving the runs for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from conftest import _runs, _search, free_port
from mlflow.tracking import MlflowClient


def test_each_search_registers_a_version_and_the_alias_moves_to_the_latest(tmp_path):
    import mlflow.pytorch
    import torch

    from tune.tracker.tracking import SearchTracker

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
        registered, version = tracker.register_model(parents[-1], *tracker.log_model(parents[-1], module, None, code))
        assert (registered, version) == ("models:/by-hand@recommended", f"models:/by-hand/{len(parents)}")
        tracker.finish_search("FINISHED")
    versions = client.search_model_versions("name = 'by-hand'")
    assert sorted((int(v.version), v.run_id) for v in versions) == [(1, parents[0]), (2, parents[1])]
    assert client.get_model_version_by_alias("by-hand", "recommended").version == 2
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model(registered).weight.eq(2.0).all()
    assert mlflow.pytorch.load_model("models:/by-hand/1").weight.eq(1.0).all()  # the first search's, for good



@pytest.mark.slow
def test_a_registry_that_refuses_the_model_fails_no_search(ray_runtime, tmp_path, monkeypatch, capsys):
    """The search and its logged model stand; the refusal is one warning line, and no alias tag is written."""
    from mlflow.exceptions import MlflowException

    from tune.tracker.tracking import SearchTracker

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



def test_the_registered_model_predicts_digit_names_from_scikit_learns_raw_arrays(default_smoke, tmp_path,
                                                                                  monkeypatch):
    """What a user takes home: the registered model with its class names and its preprocessing (the 0-16 grey levels
    scaled and upsampled as the trials saw them), labelling raw ``load_digits().images`` as well as its trial
    scored them."""
    import mlflow
    from sklearn.datasets import load_digits

    import tune
    from tune.tasks.digits import few_label_split

    _, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")
    elsewhere, before = f"sqlite:///{tmp_path / 'another.db'}", mlflow.get_tracking_uri()
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow's setters write them: put back after
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)
    mlflow.set_tracking_uri(elsewhere)  # a caller's own store: load_model reads the search's, and leaves this one
    try:
        model = tune.load_model(parent.data.tags["registered_model_uri"], tracking_uri=uri)
        assert mlflow.get_tracking_uri() == elsewhere and not (tmp_path / "another.db").exists()
        assert "MLFLOW_REGISTRY_URI" not in os.environ  # nothing left for a later search or subprocess to inherit
    finally:
        mlflow.set_tracking_uri(before)
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
