"""Real searches on a local Ray runtime: the shared smoke search end to end (trials, confirmation, the parent's
summary), parallel trials, GPU fractions and freeze-aware shares, resources no node can meet, every search
space, crash retry, multi-objective, grid, time budget, divergence, out-of-memory, storage URIs, seeds, bf16,
policy searches and ASHA's rungs."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from conftest import _phase, _runs, _search, most_open_at_once
from mlflow.tracking import MlflowClient

import run_search
from tune.driver import cluster, tuner
from tune.errors import ConfigError
from tune.settings.config import ReportConfig
from tune.settings.loading import load_config, parse_overrides
from tune.training.trial import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[2]
# the yolo spaces need the yolo extra and a data set: tests/test_yolo.py runs them on synthetic data
# and the image and text spaces need data of a user's: tests/test_image.py and test_text.py run them on their own
SPACES = sorted(p for p in (ROOT / "search_spaces").glob("*.yaml")
                if not p.name.startswith(("yolo", "image", "text")))


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
    from tune.reporting import analysis
    from tune.tracker import tracking

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
    # the candidates: the best score's range, then the cheapest ranges near it (analysis.candidates), up to 2
    records = tracking.fetch_trials(uri, parent.info.run_id)
    expected = analysis.candidates([r for r in records if "candidate" not in r.tags], ReportConfig(),
                                 ["freeze_stop", "lr"], top=2)
    assert set(by_candidate) == set(expected)
    best = max((r for r in analysis.summarise(records) if r.candidate is None), key=lambda r: r.score)
    assert best.name in by_candidate
    # the parent's recommendation is the confirmed choice, judged on the confirmation runs alone
    confirmed = analysis.confirmed([r for r in analysis.summarise(records) if r.candidate], 0.01, "epoch_time_s").chosen
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
    assert metrics["best_score"] == max(r.score for r in analysis.summarise(records) if r.candidate is None)
    assert metrics["trials_finished"] == 4 and metrics["trials_failed"] == 0
    assert {"recommended_epoch_time_s", "recommended_peak_mem_mb", "trials_stopped_early"} <= set(metrics)



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
    assert tuner.concurrency(cfg) == 2  # 2 logical GPUs, a whole one per trial
    assert tuner.concurrency(cfg, smallest_gpu_share=0.25) == 8  # 8 of the deepest freezes fit, CPUs allow 8



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



def test_a_trial_needs_its_cpus_and_gpus_on_one_node(monkeypatch):
    # a CPU node and a small GPU node: 4 CPUs and 1 GPU exist, but on no one node
    monkeypatch.setattr(cluster, "_nodes", lambda: [{"CPU": 8.0, "GPU": 0.0}, {"CPU": 2.0, "GPU": 1.0}])
    cfg = _resources_cfg("search.cpus_per_trial=4", "search.gpus_per_trial=1")
    with pytest.raises(ConfigError, match=r"^search.cpus_per_trial: got 4 \(no node has 4 CPUs and 1 GPUs\); "
                                          r"allowed: at most 2, the CPUs of the largest node with 1 GPUs"):
        cluster.check_resources(cfg, on_cluster=False)
    assert cluster.check_resources(_resources_cfg("search.cpus_per_trial=2", "search.gpus_per_trial=1"),
                                  on_cluster=False) == []



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
    scheduler = tuner._scheduler(cfg)
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
