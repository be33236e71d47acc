"""One search's lifecycle (tune.driver.study), logged by hand without Ray into a real sqlite MLflow store: the report
rebuilt from MLflow alone, its recommendation and the parent's tags following the confirmed choice rather than
the search's single-trial pick, and a tolerance chosen afterwards said to be no part of the promise."""

from __future__ import annotations

from mlflow.tracking import MlflowClient


def test_the_recommendation_follows_the_confirmed_choice_not_the_search_trial(tmp_path):
    """Logged by hand (no Ray): the search recommends the cheap trial, its confirmation does not hold up, so the
    report, the parent's tags and the logged model's trial are the expensive one."""
    from tune.driver.study import rebuild_report
    from tune.reporting.records import search_tags
    from tune.tracker.tracking import SearchTracker
    from tune.tracker.trial_runs import TrialRuns

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
