"""What a search found, in words, from MLflow data alone: the tables of the trials at their best epoch, by policy
and on the frontier, the recommendation and, after ``--confirm``, whether it holds up across seeds (``build_report``,
a ``Report``); the numbers are tune.reporting.analysis's (its names import from here too), the files and plots
tune.reporting.plots'.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tune.reporting.analysis import (
    DEFAULT_FRONTIER,
    POLICY_FRONTIER,
    Recommendation,
    TrialResult,
    by_policy,
    called,
    candidates,
    confirmation_candidates,
    confirmed,
    dominates,
    frontier,
    indistinct,
    other_searched,
    recommend,
    summarise,
    value_at_best,
)
from tune.reporting.race import Candidate, Decision
from tune.reporting.records import TrialRecord, short

__all__ = ["DEFAULT_FRONTIER", "POLICY_FRONTIER", "Candidate", "Recommendation", "Report", "TrialResult",
           "build_report", "by_policy", "called", "candidate_table", "candidates", "confirmation_candidates",
           "confirmed", "confirmed_text", "depth_table", "dominates", "frontier", "indistinct", "recommend",
           "summarise", "test_scores", "trial_table", "value_at_best"]


# -- text -------------------------------------------------------------------------------------------------------
def _called(candidate: Candidate) -> str:
    """``called`` for a candidate: by its policy, or its label where it was given a label alone."""
    return called(candidate.policy) if candidate.policy is not None else f"freeze {candidate.label}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def trial_table(results: Sequence[TrialResult], searched: Sequence[str], marks: dict[str, str] | None = None) -> str:
    """One row per trial, best first: freeze range (its policy, where more than hard freezing was searched), the
    other searched values, score at the best epoch, training time to it, mean epoch time, peak memory, epochs
    run."""
    marks = marks or {}
    others = other_searched(searched)
    header = ["", "trial", "policy" if by_policy(results) else "freeze", *others, "score", "best@", "time_s",
              "epoch_s", "mem_mb", "epochs", "status"]
    rows = []
    for r in results:
        status = r.status if not r.stopped_early else f"{r.status} (ASHA stop)"
        rows.append([marks.get(r.name, ""), r.name, r.label, *(short(r.params.get(k, "")) for k in others),
                     f"{r.score:.4f}", str(r.best_epoch), f"{r.time_to_best_s:.2f}", f"{r.epoch_time_s:.3f}",
                     f"{r.peak_mem_mb:.2f}", str(r.epochs_run), status])
    return _table(header, rows)


def depth_table(results: Sequence[TrialResult]) -> str:
    """The trade-off by freeze range (by policy, where more than hard freezing was searched): trials, best score,
    median epoch time, the best trial's training time to its best epoch, peak memory."""
    groups: dict[str, list[TrialResult]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    rows = [[label, str(len(group)), f"{max(r.score for r in group):.4f}",
             f"{statistics.median(r.epoch_time_s for r in group):.3f}",
             f"{max(group, key=lambda r: r.score).time_to_best_s:.2f}", f"{max(r.peak_mem_mb for r in group):.2f}"]
            for label, group in sorted(groups.items(), key=lambda kv: (kv[1][0].freeze_key, kv[0]))]
    return _table(["policy" if by_policy(results) else "freeze", "trials", "best score", "median epoch_s",
                   "best's time_s", "mem_mb"], rows)


def candidate_table(decision: Decision, cost: str) -> str:
    """The race's table: each candidate's seeds, mean, its paired comparison with the highest mean, and its
    simultaneous bound on how far below the best candidate it is."""
    rows = []
    for c in decision.candidates:
        compared = decision.comparisons[c.name]
        own = c is decision.best  # the highest mean: no gap of its own
        rows.append(["*" if c is decision.chosen else "", c.name, c.label, c.params_text, str(len(c.scores)),
                     f"{c.mean:.4f}", f"{c.sd:.4f}", "-" if own else f"{compared.gap:+.4f}",
                     "-" if own else f"{compared.paired_se:.4f}", "-" if own else f"{compared.unpaired_se:.4f}",
                     f"{compared.upper:.4f}", compared.verdict, f"{c.cost:.4g}"])
    return _table(["", "candidate", "freeze", "params", "seeds", "mean score", "sd", "gap to highest", "paired se",
                   "unpaired se", f"bound ({_percent(decision.level)})", "verdict", cost], rows)


def _percent(level: float) -> str:
    """97.5%, 95%, 98.3%: a level with the digits it needs."""
    return f"{level:.1%}".replace(".0%", "%")


def confirmed_text(decision: Decision, cost: str) -> str:
    """The race's answer in words: proven or not, what it recommends and why, the rule and its promise."""
    chosen, best, tolerance = decision.chosen, decision.best, decision.tolerance
    confidence, seeds = f"{decision.confidence:.0%}", decision.seeds
    low, high = chosen.interval
    mean = f"mean score {chosen.mean:.4f} (95% interval {low:.4f}-{high:.4f}) over {len(chosen.scores)} seeds"
    head = f"Recommendation: {_called(chosen)} ({chosen.params_text})"
    if decision.ended == "single":
        why = (f"the other {decision.absent} candidate{'s' * (decision.absent != 1)} of the race finished no run"
               if decision.absent else "no other configuration came within three tolerances of its score in the "
                                        "search")
        return (f"{head}, confirmed with fresh seeds: {mean}. It was the only candidate with finished runs ({why}): "
                "nothing to race, so nothing is proven.")
    compared = decision.comparisons[chosen.name]
    if decision.decided:
        text = f"{head}, proven within the tolerance ({tolerance:g}) of the best candidate: {mean}"
        if chosen is best:
            text += (f", the highest mean, at most {max(compared.upper, 0):.4f} below the best at {confidence} "
                     "confidence; no cheaper candidate was proven within.")
        else:
            text += (f", {compared.gap:.4f} below the highest mean ({_called(best)}, {best.mean:.4f}) and "
                     f"at most {max(compared.upper, 0):.4f} below the best at {confidence} confidence, at "
                     f"{chosen.cost / best.cost:.0%} of its {cost}.")
    else:
        text = (f"{head}, the highest mean of the race: {mean}. Nothing is proven: ")
        if decision.ended == "futile":
            text += (f"the race stopped after {seeds} of its {decision.budget} seeds, because at the means and spread "
                     f"seen no candidate had a {decision.chance:.0%} chance of being proven within the tolerance "
                     f"({tolerance:g}) at {decision.budget} seeds")
        elif decision.ended == "budget":
            text += (f"after {seeds} seeds (the budget, report.confirm_max_seeds) no candidate's bound on its gap to "
                     f"the best is within the tolerance ({tolerance:g}) at {confidence} confidence")
        else:
            text += (f"the race ended after {seeds} of its {decision.budget} seeds, before the one look at which it "
                     "decides (a run failed or the search was stopped)")
        text += "; the highest mean is recommended instead, which errs towards the score, not the cost."
        if decision.absent:
            text += (f" {decision.absent} candidate{'s' * (decision.absent != 1)} of the race finished no run: nothing "
                     "is proven against a candidate that did not run.")
        if decision.more_seeds is not None and decision.prospect is not None:
            prospect = next(c for c in decision.candidates if c.name == decision.prospect)
            text += (f" At the spread seen, proving {_called(prospect)} within would take about "
                     f"{decision.more_seeds} more seed{'s' * (decision.more_seeds != 1)} per candidate "
                     "(report.confirm_max_seeds).")
        near = [c for c in decision.candidates if c.cost < chosen.cost
                and decision.comparisons[c.name].gap <= tolerance and decision.comparisons[c.name].verdict != "worse"]
        if near:
            text += " Cheaper, within the tolerance on their means but not proven: " + ", ".join(
                f"{_called(c)} (gap {decision.comparisons[c.name].gap:.4f}, bound "
                f"{decision.comparisons[c.name].upper:.4f})" for c in near) + "."
    worse = [c for c in decision.candidates if decision.comparisons[c.name].verdict == "worse"]
    if worse:
        text += " More than the tolerance below another candidate by their bounds (a check, outside the promise): " \
            + ", ".join(
            f"{_called(c)} (at least {decision.comparisons[c.name].lower:.4f})" for c in worse) + "."
    others = len(decision.candidates) - 1
    correction = ("one comparison, so no correction" if others == 1 else
                  f"Bonferroni over the {others} comparisons with the best")
    level = _percent(decision.level)
    text += (f" The rule: a candidate is proven within the tolerance when its one-sided {level} upper bound on "
             "(each other candidate's mean - its mean), from the per-seed differences (every candidate runs the same "
             f"seeds), is at most the tolerance, tested once, at {decision.budget} seeds; the recommendation is the "
             "cheapest proven candidate. The promise: at most "
             f"{_percent(1 - decision.confidence)} of races end with a recommendation called proven that is more "
             f"than the tolerance below the best candidate ({correction}; for seed noise near normal: "
             "benchmarks/race_error.py checks it by simulation, and where it does not hold).")
    return text


@dataclass
class Report:
    """A search's report: its trials at their best epoch (``trials``), the confirmation's runs, the frontier, the
    recommendation, the race's decision and the text."""

    trials: list[TrialResult]
    confirmation: list[TrialResult]
    front: list[TrialResult]
    objectives: list[tuple[str, str]]
    recommendation: Recommendation | None
    decision: Decision | None = None  # the confirmation race's (tune.reporting.race)
    text: str = ""
    reference: float | None = None  # the linear probe's score (probe_score), where the heads started from it
    val_size: int | None = None  # the validation split's examples, which scored every epoch (None: not known)

    @property
    def search(self) -> list[TrialResult]:
        """``trials`` under its other name (code that reads a report as ``report.search``)."""
        return self.trials

    @property
    def candidates(self) -> list[Candidate]:
        return self.decision.candidates if self.decision is not None else []

    @property
    def confirmed_choice(self) -> Candidate | None:
        return self.decision.chosen if self.decision is not None else None

    @property
    def chosen(self) -> TrialResult | None:
        """The recommended search trial: the confirmed candidate's after a confirmation, else the recommendation."""
        if self.recommendation is None:
            return None
        if self.confirmed_choice is None:
            return self.recommendation.trial
        return next(r for r in self.trials if r.name == self.confirmed_choice.name)


def build_report(records: Sequence[TrialRecord], *, searched: Sequence[str], objectives: Sequence[tuple[str, str]],
                 tolerance: float, cost: str, header: str = "", reference: float | None = None,
                 confidence: float = 0.95, budget: int | None = None, val_size: int | None = None) -> Report:
    """The report's tables and text. ``reference``: the score of the linear probe every trial's head started from
    (``probe_score``): said first, and a trial or a recommendation that ends below it by more than ``tolerance`` is
    marked. ``budget``: the race's seeds per candidate (``report.confirm_max_seeds``), where it decides.
    ``val_size``: the validation split's examples: said, with a warning where one example moves an accuracy by more
    than ``tolerance``."""
    results = summarise(records)
    search = [r for r in results if r.candidate is None]
    confirmation = [r for r in results if r.candidate is not None]
    front_objectives = list(objectives) if len(objectives) > 1 else list(
        POLICY_FRONTIER if by_policy(search) else DEFAULT_FRONTIER)
    front = frontier(search, front_objectives)
    flat = indistinct(search)
    recommendation = None if flat else recommend(search, tolerance, cost, searched)
    report = Report(trials=search, confirmation=confirmation, front=front, objectives=front_objectives,
                    recommendation=recommendation, reference=reference, val_size=val_size)
    below = set() if reference is None else {r.name for r in search if r.score < reference - tolerance}
    marks = {r.name: "F" for r in front}
    if recommendation is not None:
        marks[recommendation.trial.name] = "R"
    marks = {name: marks.get(name, "") + ("<" if name in below else "") for name in {*marks, *below}}
    if reference is not None:
        header += (f"A linear probe fitted to convergence on the frozen features scores {reference:.4f}: the heads "
                   "started there (train.head_init: probe), and each trial's epoch 0 is that start, scored before "
                   "training (best@ 0: fine-tuning never beat it)"
                   + (f"; {len(below)} trial{'s' * (len(below) != 1)} ended below it by more than the tolerance "
                      "(<)" if below else "") + ".\n\n")
    precisions = sorted({r.tags["precision"] for r in records if r.tags.get("precision")})
    if precisions and precisions != ["32"]:  # times and memory are the precision's: say which
        header += f"Trained in {' and '.join(precisions)} (train.precision): epoch times and memory are its.\n\n"
    if val_size is not None:
        header += _validation_text(val_size, tolerance) + "\n\n"
    parts = [header + f"Trials at their best epoch ({len(search)}; F = on the frontier, R = recommended"
             + (", < = below the probe" if reference is not None else "") + "):\n"
             + trial_table(search, searched, marks),
             ("By policy:\n" if by_policy(search) else "By freeze range:\n") + depth_table(search),
             "Frontier over " + ", ".join(f"{m} ({mode})" for m, mode in front_objectives) + ":\n"
             + trial_table(front, searched)]
    if recommendation is not None:
        described = recommendation.describe()
        parts.append(described.replace("Recommendation:", "Single-trial pick (the confirmation decides):", 1)
                     if confirmation else described)
    elif flat:
        parts.append(f"No recommendation: the scores cannot tell the trials apart (every trial scored "
                     f"{search[0].score:.4f} at its best epoch). Train longer, from pretrained weights or on more "
                     "data, then search again.")
    if confirmation and recommendation is not None:
        report.decision = confirmed(confirmation, tolerance, cost, searched, confidence, budget)
        if report.decision is not None:
            parts.append("Confirmation (fresh seeds, the same for every candidate; the search's own run left out):\n"
                         + candidate_table(report.decision, cost))
            parts.append(confirmed_text(report.decision, cost))
            if report.decision.chosen.interval[0] == report.decision.chosen.interval[1]:
                parts.append(_no_width_text(report.decision.chosen, val_size))
            parts.append(f"Compute: {sum(r.epochs_run for r in search)} trial-epochs in the search, "
                         f"{sum(r.epochs_run for r in confirmation)} in the confirmation.")
    tested = test_scores(report)
    if tested:
        validation = (report.confirmed_choice.mean if report.confirmed_choice else report.chosen.score)
        spread = f" ± {statistics.stdev(tested):.4f}" if len(tested) > 1 else ""
        runs = f"over its {len(tested)} confirmation runs" if report.confirmed_choice else "of its trial"
        parts.append(f"Test split: {statistics.fmean(tested):.4f}{spread} ({runs}; validation {validation:.4f}). The "
                     "validation split chose every epoch, trial and range; the test split, scored once after the "
                     "choice, chose nothing.")
    if report.chosen is not None and _best_at_start(report):
        parts.append(f"The recommendation is best at epoch 0, before any training step: on these data the linear "
                     f"probe on {called(report.chosen.policy)}'s network is the answer, and fine-tuning it did "
                     "not help; the logged model is that start (the probe's head on the pretrained network).")
    chosen_score = report.confirmed_choice.mean if report.confirmed_choice else (
        report.chosen.score if report.chosen else None)
    if reference is not None and chosen_score is not None and chosen_score < reference - tolerance:
        parts.append(f"The recommendation scores {chosen_score:.4f}, below the linear probe's {reference:.4f} by more "
                     "than the tolerance: freezing all but the head (the probe, then fine-tuning the head) was not "
                     "searched or was stopped early; search it (space.freeze_stop up to all_but_head).")
    report.text = "\n\n".join(parts)
    return report


def _validation_text(val_size: int, tolerance: float) -> str:
    """How many examples scored every epoch and, where one of them moves an accuracy by more than the tolerance
    (fewer than 1 / tolerance), that the scores cannot separate it."""
    if not (tolerance > 0 and val_size * tolerance < 1):
        return f"Scored on {val_size} validation examples."
    return (f"Scored on {val_size} validation examples: too few to separate the tolerance ({tolerance:g}), as one "
            f"example moves an accuracy by {1 / val_size:.4f}; differences within the tolerance are noise here, and "
            f"telling them apart takes a validation split of at least {math.ceil(1 / tolerance - 1e-9)} examples.")


def _no_width_text(chosen: Candidate, val_size: int | None) -> str:
    """An interval of no width: every seed scored the same, which measures no noise rather than proving none."""
    low, high = chosen.interval
    steps = (f" on {val_size} validation examples, where a score moves in steps of {1 / val_size:.4f}"
             if val_size else "")
    return (f"The recommendation's interval {low:.4f}-{high:.4f} has no width: its {len(chosen.scores)} seeds scored "
            f"exactly the same{steps}; that is no certainty, only a spread too small for the scores to show.")


def _best_at_start(report: Report) -> bool:
    """Whether the recommendation's best epoch is 0 (its start, the probe): in most of its confirmation runs after a
    confirmation, else in its trial."""
    if report.confirmed_choice is not None:
        runs = [r for r in report.confirmation if r.name in report.confirmed_choice.runs]
        return 2 * sum(r.best_epoch == 0 for r in runs) > len(runs)
    return report.chosen is not None and report.chosen.best_epoch == 0


def test_scores(report: Report) -> list[float]:
    """The recommended configuration's test-split scores: its confirmation runs' (after a confirmation) or its
    trial's, where they were scored (a task with a test split)."""
    if report.chosen is None:
        return []
    if report.confirmed_choice is not None:
        runs = [r for r in report.confirmation if r.candidate == report.confirmed_choice.name
                and r.name in report.confirmed_choice.runs]
    else:
        runs = [report.chosen]
    return [r.values["test_score"] for r in runs if not math.isnan(r.values.get("test_score", math.nan))]
