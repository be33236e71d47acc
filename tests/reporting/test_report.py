"""The frontier, the recommendation rule and the plots, on hand-made trial records."""

from __future__ import annotations

import dataclasses
import math
import statistics

import matplotlib.image
import pytest

from tune.reporting.analysis import (
    DEFAULT_FRONTIER,
    confirmed,
    dominates,
    frontier,
    recommend,
    summarise,
    value_at_best,
)
from tune.reporting.plots import write_report
from tune.reporting.records import TrialRecord
from tune.reporting.report import build_report, confirmed_text
from tune.settings.policy import Adapter, Policy


def record(name: str, stop: int, scores: list[float], epoch_time: float, memory: float, *, lr: float = 1e-3,
           candidate: str | None = None, seed: int | None = None, status: str = "FINISHED") -> TrialRecord:
    epochs = range(1, len(scores) + 1)
    tags = {"candidate": candidate} if candidate else {}
    params = {"freeze_range": f"[0, {stop})", "freeze_stop": str(stop), "lr": str(lr),
              **({"seed": str(seed)} if seed is not None else {})}
    return TrialRecord(run_id=name, name=name, status=status, params=params, tags=tags,
        history={"score": list(zip(epochs, scores, strict=True)),
                 "epoch_time_s": [(e, epoch_time) for e in epochs],
                 "train_time_s": [(e, epoch_time * e) for e in epochs],
                 "peak_mem_mb": [(e, memory) for e in epochs]})


def test_trials_are_compared_at_their_best_epoch_not_their_last():
    [result] = summarise([record("a", 2, [0.5, 0.9, 0.7], epoch_time=2.0, memory=5.0)])
    assert (result.best_epoch, result.score) == (2, 0.9)
    assert result.time_to_best_s == 4.0  # cumulative training time at epoch 2, not at the end
    assert result.epoch_time_s == 2.0 and result.peak_mem_mb == 5.0
    assert value_at_best([(1, 3.0), (2, 7.0)], "peak_mem_mb", 1) == 7.0  # memory: the max over epochs


def test_dominance_needs_at_least_as_good_everywhere_and_better_somewhere():
    a, b, c, d = summarise([record("a", 0, [0.9], 2.0, 8.0), record("b", 4, [0.9], 1.0, 3.0),
                            record("c", 6, [0.8], 1.0, 3.0), record("d", 4, [0.9], 1.0, 3.0)])
    by = {r.name: r for r in (a, b, c, d)}
    assert dominates(by["b"], by["a"], DEFAULT_FRONTIER)  # same score, cheaper, less memory
    assert dominates(by["b"], by["c"], DEFAULT_FRONTIER)  # same cost, higher score
    assert not dominates(by["b"], by["d"], DEFAULT_FRONTIER)  # equal points dominate neither way
    assert not dominates(by["a"], by["c"], DEFAULT_FRONTIER)  # a trade-off: better score, higher cost


def test_frontier_keeps_ties_and_trade_offs_and_drops_dominated_trials():
    results = summarise([record("slow_best", 0, [0.95], 2.0, 8.0), record("mid", 4, [0.93], 1.0, 3.0),
                         record("mid_twin", 4, [0.93], 1.0, 3.0), record("dominated", 3, [0.90], 1.5, 4.0),
                         record("cheap", 7, [0.60], 0.5, 0.6)])
    names = [r.name for r in frontier(results, DEFAULT_FRONTIER)]
    assert names[0] == "slow_best" and set(names) == {"slow_best", "mid", "mid_twin", "cheap"}


def test_single_objective_frontier_is_the_best_score_and_its_ties():
    results = summarise([record("a", 0, [0.9], 2.0, 8.0), record("b", 4, [0.9], 1.0, 3.0),
                         record("c", 6, [0.8], 0.5, 1.0)])
    assert {r.name for r in frontier(results, [("score", "max")])} == {"a", "b"}


def test_recommendation_is_the_cheapest_trial_within_tolerance_of_the_best():
    results = summarise([record("best", 0, [0.950], 2.0, 8.0), record("close", 4, [0.945], 1.0, 3.0),
                         record("cheaper_but_worse", 6, [0.90], 0.5, 1.0)])
    chosen = recommend(results, tolerance=0.01, cost="epoch_time_s")
    assert (chosen.trial.name, chosen.best.name) == ("close", "best")
    assert "within the tolerance" in chosen.describe() and "50%" in chosen.describe()
    assert recommend(results, tolerance=0.0, cost="epoch_time_s").trial.name == "best"
    assert recommend(results, tolerance=0.1, cost="peak_mem_mb").trial.name == "cheaper_but_worse"


def _paired(expensive: list[float], cheap: list[float]) -> list:
    return summarise([record(f"x{i}", 0, [s], 2.0, 8.0, candidate="expensive", seed=i) for i, s in
                      enumerate(expensive)] +
                     [record(f"y{i}", 4, [s], 1.0, 3.0, candidate="cheap", seed=i) for i, s in enumerate(cheap)])


def test_a_cheaper_candidate_is_recommended_only_when_proven_within_the_tolerance_on_paired_seeds():
    # the cheap candidate trails the expensive one by 0.004-0.006 on every seed: proven within 0.01
    proven = confirmed(_paired([0.95, 0.93, 0.94], [0.945, 0.926, 0.934]), tolerance=0.01, cost="epoch_time_s")
    assert proven.chosen.name == "cheap" and proven.best.name == "expensive" and proven.decided
    compared = proven.comparisons["cheap"]
    # gaps 0.005, 0.004, 0.006: mean 0.005, sd 0.001; upper bound mean + t(0.95, 2 df) * sd / sqrt(3)
    assert compared.gap == pytest.approx(0.005) and compared.paired_se == pytest.approx(0.001 / 3 ** 0.5)
    assert compared.upper == pytest.approx(0.005 + 2.919986 * 0.001 / 3 ** 0.5, abs=1e-6)
    assert compared.verdict == "within" and compared.unpaired_se > 5 * compared.paired_se
    low, high = proven.chosen.interval  # mean ± t(0.975, 2 df) * sd / sqrt(3)
    half = 4.302653 * statistics.stdev([0.945, 0.926, 0.934]) / 3 ** 0.5
    assert (low, high) == pytest.approx((0.935 - half, 0.935 + half), abs=1e-6)
    text = confirmed_text(proven, "epoch_time_s")
    assert "freeze [0, 4)" in text and f"95% interval {low:.4f}-{high:.4f}" in text
    assert "proven within the tolerance (0.01) of the best candidate" in text and "below the highest mean (freeze " \
        "[0, 0), 0.9400)" in text and "at most 0.0067 below the best at 95% confidence" in text
    assert "The promise: at most 5% of races end with a recommendation called proven that is more than the " \
        "tolerance below the best candidate" in text
    # the same scores with the cheap candidate's seeds shuffled: nothing cancels, nothing is proven
    shuffled = confirmed(_paired([0.95, 0.93, 0.94], [0.926, 0.934, 0.945]), tolerance=0.01, cost="epoch_time_s")
    assert shuffled.chosen.name == "expensive" and shuffled.comparisons["cheap"].verdict == "undecided"
    assert not shuffled.decided and shuffled.ended == "budget"
    text = confirmed_text(shuffled, "epoch_time_s")
    assert "the highest mean of the race" in text and "Nothing is proven: after 3 seeds" in text
    assert "proven within" not in text.split(" The rule:")[0]
    # the proven table three seeds into a race of five: no claim before the budget
    early = confirmed(_paired([0.95, 0.93, 0.94], [0.945, 0.926, 0.934]), tolerance=0.01, cost="epoch_time_s",
                      budget=5)
    assert not early.decided and early.chosen.name == "expensive"
    # a stricter confidence needs a smaller bound: at 0.999 the proven table is undecided
    assert confirmed(_paired([0.95, 0.93, 0.94], [0.945, 0.926, 0.934]), tolerance=0.01, cost="epoch_time_s",
                     confidence=0.999).chosen.name == "expensive"


def test_a_candidate_proven_worse_by_more_than_the_tolerance_is_dropped_from_the_race():
    worse = confirmed(_paired([0.950, 0.951, 0.949], [0.900, 0.902, 0.899]), tolerance=0.01, cost="epoch_time_s")
    assert worse.chosen.name == "expensive" and worse.comparisons["cheap"].verdict == "worse"
    assert worse.decided and worse.ended == "proven"  # the best is proven within: the other is far below it
    assert "More than the tolerance below another candidate by their bounds (a check, outside the promise): freeze " \
        "[0, 4)" in confirmed_text(worse, "epoch_time_s")


def test_candidates_are_the_best_range_and_the_cheapest_ranges_near_it_each_at_its_best_trial():
    from tune.reporting.analysis import candidates
    from tune.settings.config import ReportConfig

    records = [record("best", 0, [0.95], 2.0, 8.0), record("best_other_lr", 0, [0.90], 2.0, 8.0),
               record("one", 1, [0.93], 1.8, 7.0), record("one_better_lr", 1, [0.94], 1.8, 7.0),
               record("three", 3, [0.925], 1.2, 5.0), record("four", 4, [0.921], 1.0, 4.0),
               record("five", 5, [0.915], 0.8, 3.0), record("six", 6, [0.80], 0.5, 1.0)]
    picked = candidates(records, ReportConfig(tolerance=0.01), ["freeze_stop", "lr"], top=3)
    # the two best ranges (the race's references, each at its best trial); then of the other ranges within 0.03 of
    # the best ([0, 3), [0, 4)), the cheapest; [0, 5) and [0, 6) are too far below
    assert list(picked) == ["best", "one_better_lr", "four"]
    assert picked["four"] == {"freeze_stop": 4, "lr": 0.001}
    # with more places, up to three references and the cheapest near range
    assert list(candidates(records, ReportConfig(tolerance=0.01), ["freeze_stop", "lr"], top=5)) == [
        "best", "one_better_lr", "three", "four"]
    # with two places, one reference and the cheapest near range
    assert list(candidates(records, ReportConfig(tolerance=0.01), ["freeze_stop", "lr"], top=2)) == ["best", "four"]
    flat = [record(name, stop, [0.5], 1.0, 1.0) for name, stop in (("a", 0), ("b", 2), ("c", 4))]
    assert candidates(flat, ReportConfig(), ["freeze_stop"], top=3) == {}  # nothing to tell apart


def test_the_deepest_freeze_is_a_candidate_where_early_stopping_may_have_hidden_it():
    from tune.reporting.analysis import candidates
    from tune.settings.config import ReportConfig

    def trials(deepest_stopped: bool) -> list[TrialRecord]:
        records = [record("best", 0, [0.95], 2.0, 8.0), record("three", 3, [0.945], 1.2, 5.0),
                   record("four", 4, [0.942], 1.0, 4.0), record("probe", 7, [0.89], 0.2, 1.0)]
        for trial, trainable in zip(records, (900, 500, 300, 10), strict=True):
            trial.params["trainable_params"] = str(trainable)
        if deepest_stopped:
            records[-1].tags["stopped_early"] = "True"
        return records

    rule = ReportConfig(tolerance=0.01)
    # all but the head, stopped early far below the best: confirmed all the same (a probe-started fine-tune dips in
    # its first epochs, where ASHA may stop it)
    assert list(candidates(trials(True), rule, ["freeze_stop", "lr"], top=3)) == ["best", "three", "probe"]
    assert list(candidates(trials(True), rule, ["freeze_stop", "lr"], top=4)) == ["best", "three", "four", "probe"]
    assert list(candidates(trials(True), rule, ["freeze_stop", "lr"], top=1)) == ["best"]
    # trained to its last epoch and still far below: judged like any other range
    assert list(candidates(trials(False), rule, ["freeze_stop", "lr"], top=3)) == ["best", "three", "four"]


def test_the_test_split_is_reported_beside_validation_and_changes_no_choice():
    def runs(test_cheap: float, test_expensive: float) -> list[TrialRecord]:
        made = [record("cheap", 4, [0.945], 1.0, 3.0), record("expensive", 0, [0.950], 2.0, 8.0)]
        for seed in (1, 2):
            for name, stop, score, cost, test in (("cheap", 4, 0.94, 1.0, test_cheap),
                                                  ("expensive", 0, 0.95, 2.0, test_expensive)):
                run = record(f"{name}{seed}", stop, [score - 0.002 * seed], cost, cost, candidate=name, seed=seed)
                run.history["test_score"] = [(1, test + 0.001 * seed)]
                made.append(run)
        return made

    built = [build_report(runs(*tests), searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                          cost="epoch_time_s") for tests in ((0.93, 0.96), (0.99, 0.50))]
    # the test scores swing from one candidate to the other; the choice does not move
    assert [b.chosen.name for b in built] == ["cheap", "cheap"]
    assert [b.confirmed_choice.name for b in built] == ["cheap", "cheap"]
    assert "Test split: 0.9315 ± 0.0007 (over its 2 confirmation runs; validation 0.9370)" in built[0].text
    assert "the test split, scored once after the choice, chose nothing" in built[0].text


def test_no_recommendation_where_every_score_is_the_same():
    records = [record(f"t{stop}", stop, [0.0, 0.0], 1.0 - 0.1 * stop, 8.0 - stop) for stop in range(3)]
    report = build_report(records, searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                          cost="epoch_time_s")
    assert report.recommendation is None and report.chosen is None
    assert "No recommendation: the scores cannot tell the trials apart (every trial scored 0.0000" in report.text
    assert "Recommendation:" not in report.text


def test_confirmation_counts_each_seed_once_and_only_runs_that_finished():
    # A driver stopped during --confirm, then resumed: seed 1 of "cheap" was killed after one epoch and run again;
    # seed 2 of "expensive" had finished before the stop and its rerun (an older version) is a duplicate.
    runs = [record("x1", 0, [0.95, 0.96], 2.0, 8.0, candidate="expensive", seed=1),
            record("x2", 0, [0.94, 0.95], 2.0, 8.0, candidate="expensive", seed=2),
            record("x2-again", 0, [0.94, 0.95], 2.0, 8.0, candidate="expensive", seed=2),
            record("y1-killed", 4, [0.20], 1.0, 3.0, candidate="cheap", seed=1, status="KILLED"),
            record("y1-failed", 4, [0.30], 1.0, 3.0, candidate="cheap", seed=1, status="FAILED"),
            record("y1", 4, [0.93, 0.955], 1.0, 3.0, candidate="cheap", seed=1),
            record("y2", 4, [0.93, 0.945], 1.0, 3.0, candidate="cheap", seed=2)]
    decision = confirmed(summarise(runs), tolerance=0.01, cost="epoch_time_s")
    assert {c.name: sorted(c.scores) for c in decision.candidates} == {"expensive": [0.95, 0.96],
                                                                       "cheap": [0.945, 0.955]}
    assert decision.chosen.name == "cheap"  # with the killed run counted its mean would be far below


def test_report_text_and_plots_are_written(tmp_path):
    records = [record(f"t{stop}", stop, [0.5 + 0.05 * stop, 0.6 + 0.04 * stop], 1.0 - 0.1 * stop, 8.0 - stop)
               for stop in range(6)]
    report = build_report(records, searched=["freeze_stop", "lr"], objectives=[("score", "max")], tolerance=0.02,
                          cost="epoch_time_s")
    assert "Recommendation: freeze [0, 5)" in report.text and "Frontier over score" in report.text
    files = write_report(report, records, tmp_path, "demo")
    names = {f.name for f in files}
    assert names == {"score_by_epoch.png", "resources_by_range.png", "frontier.png", "report.txt", "summary.md"}
    for path in files:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            image = matplotlib.image.imread(path)
            assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01  # not a blank canvas
    summary = (tmp_path / "summary.md").read_text()
    assert "![frontier](frontier.png)" in summary and "Recommendation" in summary


@pytest.mark.parametrize("cost", ["epoch_time_s", "train_time_s", "peak_mem_mb"])
def test_every_cost_name_is_a_compared_value(cost):
    [result] = summarise([record("a", 2, [0.5, 0.9], epoch_time=2.0, memory=5.0)])
    assert not math.isnan(result.values[cost])


def test_params_read_back_from_mlflow_keep_their_types():
    from tune.reporting.records import typed

    assert typed("5e-05") == 5e-05 and typed("3") == 3 and typed("adam") == "adam"
    # what str() wrote, read back: a string that YAML would read as a bool or a mapping stays the string
    assert typed("off") == "off" and typed("None") is None and typed("True") is True and typed("[0, 2]") == [0, 2]
    assert typed("bf16-mixed") == "bf16-mixed" and typed("[0, 3)") == "[0, 3)"


def test_a_trial_results_params_are_typed_as_the_recommendations_are_and_its_labels_stay_strings():
    trial = record("a", 2, [0.5, 0.9], epoch_time=2.0, memory=5.0, lr=5e-05)
    trial.params.update(prefix_cache="off", frozen_flops_share="0.2500",
                        **{key: str(value) for key, value in Policy(frozen=(0, 2), thaw=1).params().items()})
    [result] = summarise([trial])
    assert result.params["lr"] == 5e-05 and result.params["freeze_stop"] == 2
    assert result.params["frozen_flops_share"] == 0.25 and result.params["prefix_cache"] == "off"
    assert result.params["freeze_range"] == result.freeze_range == "{0, 2}"  # a label, not a set
    assert result.params["policy"] == result.label == "{0, 2} thaw@1"
    built = build_report([trial, record("b", 3, [0.4, 0.8], epoch_time=1.0, memory=4.0, lr=0.001)],
                         searched=["freeze_stop", "lr"], objectives=[("score", "max")], tolerance=0.01,
                         cost="epoch_time_s")
    assert "5e-05" in built.text and "0.001" in built.text  # the table shows the typed values as it showed the text


def test_the_probe_is_the_reference_and_trials_below_it_are_marked():
    records = [record("deep", 0, [0.60, 0.85], 2.0, 8.0), record("probe", 7, [0.80, 0.81], 0.2, 1.0)]
    built = build_report(records, searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                         cost="epoch_time_s", reference=0.80)
    assert built.text.startswith("A linear probe fitted to convergence on the frozen features scores 0.8000")
    assert "below the probe" in built.text and "below the linear probe" not in built.text  # the pick is above it
    lowered = build_report(records, searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                           cost="epoch_time_s", reference=0.90)
    rows = {line.split()[1]: line.split()[0] for line in lowered.text.splitlines() if " [0, " in line}
    assert rows["deep"] == "R<" and rows["probe"] == "F<"  # on the frontier (cheapest) and below the probe
    assert "scores 0.8500, below the linear probe's 0.9000" in lowered.text
    plain = build_report(records, searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                         cost="epoch_time_s")
    assert "linear probe" not in plain.text


def test_a_recommendation_best_at_epoch_0_is_named_the_probe_and_costs_no_training_time():
    # epochs 0..2; the all-but-head trial never beat its start (the probe), the full fine-tune did at epoch 2
    deep, full = record("deep", 7, [0.85, 0.84, 0.83], 0.2, 1.0), record("full", 0, [0.85, 0.60, 0.855], 2.0, 9.0)
    for r in (deep, full):
        r.history["score"] = [(step - 1, value) for step, value in r.history["score"]]
        r.history["train_time_s"] = [(0, 0.0)] + r.history["train_time_s"][:-1]
    built = build_report([deep, full], searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                         cost="epoch_time_s", reference=0.85)
    chosen = built.chosen
    assert (chosen.name, chosen.best_epoch, chosen.time_to_best_s) == ("deep", 0, 0.0)
    assert "The recommendation is best at epoch 0, before any training step" in built.text
    assert "each trial's epoch 0 is that start" in built.text
    full_only = build_report([full], searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                             cost="epoch_time_s", reference=0.85)
    assert "best at epoch 0" not in full_only.text


def test_trials_that_all_tie_at_their_start_recommend_the_probe_not_nothing():
    tied = [record(f"t{stop}", stop, [0.896, 0.4, 0.47], 1.0 - 0.1 * stop, 8.0 - stop) for stop in range(3)]
    for r in tied:
        r.history["score"] = [(step - 1, value) for step, value in r.history["score"]]
    built = build_report(tied, searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                         cost="epoch_time_s", reference=0.896)
    assert built.chosen.name == "t2" and built.chosen.best_epoch == 0  # the cheapest, at its start
    assert "No recommendation" not in built.text and "best at epoch 0" in built.text


def test_the_probe_is_a_line_on_the_score_by_epoch_and_frontier_plots(tmp_path, monkeypatch):
    from tune.reporting import plots as report_module

    records = [record(f"t{stop}", stop, [0.5 + 0.05 * stop, 0.6 + 0.04 * stop], 1.0 - 0.1 * stop, 8.0 - stop)
               for stop in range(3)]
    seen, save = {}, report_module._save

    def keep_lines(fig, path):
        seen[path.name] = [tuple(line.get_ydata()) for ax in fig.axes for line in ax.get_lines()]
        return save(fig, path)

    monkeypatch.setattr(report_module, "_save", keep_lines)
    for reference in (0.7, None):
        built = build_report(records, searched=["freeze_stop"], objectives=[("score", "max")], tolerance=0.01,
                             cost="epoch_time_s", reference=reference)
        write_report(built, records, tmp_path / str(reference), "demo")
        for plot in ("score_by_epoch.png", "frontier.png"):
            assert ((0.7, 0.7) in seen[plot]) == (reference is not None), plot


def _raced(cheap_scores: list[float], expensive_scores: list[float]) -> list[TrialRecord]:
    """A search of two trials and a race of them on len(scores) seeds."""
    made = [record("cheap", 4, [0.945], 1.0, 3.0), record("expensive", 0, [0.950], 2.0, 8.0)]
    for seed, (cheap, expensive) in enumerate(zip(cheap_scores, expensive_scores, strict=True), start=1):
        made += [record(f"cheap{seed}", 4, [cheap], 1.0, 3.0, candidate="cheap", seed=seed),
                 record(f"expensive{seed}", 0, [expensive], 2.0, 8.0, candidate="expensive", seed=seed)]
    return made


def _report(records: list[TrialRecord], val_size: int | None, tolerance: float = 0.01):
    return build_report(records, searched=["freeze_stop"], objectives=[("score", "max")], tolerance=tolerance,
                        cost="epoch_time_s", val_size=val_size)


def test_the_report_says_how_many_examples_scored_each_trial_and_when_they_are_too_few_for_the_tolerance():
    records = _raced([0.93, 0.94], [0.95, 0.945])
    enough = _report(records, 1000)
    assert "Scored on 1000 validation examples." in enough.text and "too few" not in enough.text
    # 99 examples: one of them moves an accuracy by 0.0101, more than the tolerance of 0.01
    few = _report(records, 99)
    [line] = [line for line in few.text.splitlines() if "validation examples" in line]
    assert line.startswith("Scored on 99 validation examples: too few to separate the tolerance (0.01)")
    assert "one example moves an accuracy by 0.0101" in line and "at least 100 examples" in line
    assert "100 validation examples." in _report(records, 100).text and "too few" not in _report(records, 100).text
    assert "too few" in _report(records, 18, tolerance=0.05).text  # 1 / 18 = 0.056 > 0.05
    assert "validation examples" not in _report(records, None).text  # a size not known: nothing said


def test_a_confirmed_interval_with_no_width_is_said_to_show_no_noise_not_certainty():
    # every seed of the recommendation (the highest mean, nothing proven) scored the same 16 of 18
    flat = _report(_raced([15 / 18, 16 / 18], [16 / 18, 16 / 18]), 18)
    assert flat.confirmed_choice.name == "expensive"
    assert "(95% interval 0.8889-0.8889) over 2 seeds" in flat.text
    [line] = [line for line in flat.text.splitlines() if "no width" in line]
    assert line.startswith("The recommendation's interval 0.8889-0.8889 has no width: its 2 seeds scored exactly "
                           "the same")
    assert "18 validation examples" in line
    spread = _report(_raced([0.93, 0.94], [0.95, 0.945]), 1000)
    assert "no width" not in spread.text


def test_a_trials_frozen_range_is_read_from_what_its_run_logged_not_from_its_label():
    """A window's or an adapter's label says nothing parseable of its frozen blocks; the FreezeSummary's metrics do
    (the params' where a run has no such metric)."""
    logged = Policy(frozen=(0, 1, 4, 5), window=(2, 4), adapter=Adapter("lora", 8))  # what the trial's run logs
    window = dataclasses.replace(record("w", 0, [0.9], 1.0, 1.0), metrics={"freeze_start": 0.0, "freeze_stop": 6.0},
                                 params={**{k: str(v) for k, v in logged.params().items()}, "freeze_stop": "None"})
    [result] = summarise([window])
    assert result.freeze_key == (0, 6) and result.label == "train [2, 4) lora r8"
    [plain] = summarise([record("p", 3, [0.9], 1.0, 1.0)])
    assert plain.freeze_key == (0, 3)
