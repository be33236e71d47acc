"""What a trial logs (tune.tracker.trial_runs.TrialRuns), driven by hand without Ray into a real sqlite MLflow store:
its run's name, params and tags, each epoch once (also after a restart one checkpoint early), divergence, early
stops and failures, and the console line as it ends."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient


def _trial_runs(tmp_path: Path, epochs: int = 4):
    from tune.tracker.tracking import SearchTracker
    from tune.tracker.trial_runs import TrialRuns

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
    from tune.tracker.tracking import fetch_trials
    from tune.tracker.trial_runs import TrialRuns

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
