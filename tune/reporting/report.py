"""What a search found, from MLflow data alone: every trial at its best epoch, the frontier, a recommendation
and, after ``--confirm``, whether it holds up across seeds. Tables as text (the files and plots: tune.reporting.plots).

The recommendation rule (``report:`` in a space file): take the best score among the search's trials; among
the trials scoring within ``tolerance`` of it, recommend the one with the lowest ``cost`` (mean epoch time by
default; ties go to the higher score). With confirmation runs (the candidates re-run on the same fresh seeds,
the search's own run left out because it was picked for being lucky), the race (``tune.reporting.race``) recommends the
cheapest candidate proven within ``tolerance`` of the best on paired seeds, or says that nothing is proven and
recommends the highest mean.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tune.reporting.race import Candidate, Decision, decide
from tune.reporting.records import TrialRecord, short, typed_params
from tune.settings.config import ReportConfig
from tune.settings.policy import Policy
from tune.settings.space import LABELLED_KEYS

__all__ = ["Candidate", "Recommendation", "Report", "TrialResult", "build_report", "called", "candidates",
           "confirmation_candidates", "confirmed",
           "confirmed_text", "dominates", "frontier", "indistinct", "recommend", "summarise", "test_scores"]

DEFAULT_FRONTIER = (("score", "max"), ("epoch_time_s", "min"), ("peak_mem_mb", "min"))
# with policies that change an epoch's cost over the run (a thaw): the training time to the best epoch
POLICY_FRONTIER = (("score", "max"), ("train_time_s", "min"), ("peak_mem_mb", "min"))
_MAX_OVER_EPOCHS = ("peak_mem_mb", "rss_mb")
_MEAN_OVER_EPOCHS = ("epoch_time_s", "samples_per_s")
_SCORED_ONCE = ("test_score",)  # logged once, after the search, for the best-epoch checkpoint


@dataclass(frozen=True)
class TrialResult:
    name: str
    status: str
    policy: Policy  # what it froze and what its policy adds (tune.settings.policy), from its run's params
    freeze_key: tuple[int, int]  # (start, stop) of the frozen range, for ordering
    params: dict[str, Any]  # typed as the run's params were written (tune.reporting.records.typed_params)
    best_epoch: int
    score: float  # at the best epoch
    values: dict[str, float]  # each metric at the comparison point (see value_at_best)
    epochs_run: int
    stopped_early: bool
    candidate: str | None = None  # confirmation runs: the search trial they repeat

    @property
    def label(self) -> str:
        """What the trial is called in the tables: its policy's label (its freeze range, for a hard freeze), e.g.
        ``[0, 5) thaw@2``."""
        return self.policy.label

    @property
    def freeze_range(self) -> str:
        """Its frozen blocks: ``[0, 3)``, ``{0, 2}``."""
        return self.policy.freeze_range

    @property
    def epoch_time_s(self) -> float:
        return self.values.get("epoch_time_s", math.nan)

    @property
    def time_to_best_s(self) -> float:
        return self.values.get("train_time_s", math.nan)

    @property
    def peak_mem_mb(self) -> float:
        return self.values.get("peak_mem_mb", math.nan)


def value_at_best(history: list[tuple[int, float]], metric: str, best_epoch: int) -> float:
    """How a trial is compared on ``metric``: peak memory is the max over epochs, epoch time and throughput
    the mean, anything else (score, train_time_s = time to the best epoch, losses) its value at the best epoch."""
    values = [v for _, v in history]
    if not values:
        return math.nan
    if metric in _MAX_OVER_EPOCHS:
        return max(values)
    if metric in _MEAN_OVER_EPOCHS:
        return statistics.fmean(values)
    if metric in _SCORED_ONCE:
        return values[-1]
    at = [v for step, v in history if step == best_epoch]
    return at[-1] if at else math.nan


def called(policy: Policy) -> str:
    """How the report's sentences name a trial's policy: ``freeze [0, 3)``; a trained window's label says what trains,
    and goes as it is (``train [3, 4)``, never "freeze train [3, 4)")."""
    return policy.label if policy.window is not None else f"freeze {policy.label}"


def _called(candidate: Candidate) -> str:
    """``called`` for a candidate: by its policy, or its label where it was given a label alone."""
    return called(candidate.policy) if candidate.policy is not None else f"freeze {candidate.label}"


def summarise(records: Sequence[TrialRecord]) -> list[TrialResult]:
    """Each trial at its best epoch (by score; the earliest on ties), best first; trials with no epoch are left
    out."""
    results = []
    for record in records:
        scores = record.history.get("score", [])
        if not scores:
            continue
        best_epoch, best = max(scores, key=lambda point: (point[1], -point[0]))
        values = {metric: value_at_best(history, metric, best_epoch) for metric, history in record.history.items()}
        results.append(TrialResult(
            name=record.name, status=record.status, policy=record.policy, freeze_key=record.frozen_range,
            params=typed_params(record.params), best_epoch=best_epoch, score=best, values=values,
            epochs_run=scores[-1][0], stopped_early=record.tags.get("stopped_early") == "True",
            candidate=record.tags.get("candidate")))
    return sorted(results, key=lambda r: (-r.score, r.epoch_time_s))


# -- frontier ---------------------------------------------------------------------------------------------------
def dominates(a: TrialResult, b: TrialResult, objectives: Sequence[tuple[str, str]]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    at_least, better = True, False
    for metric, mode in objectives:
        x, y = a.values.get(metric, math.nan), b.values.get(metric, math.nan)
        if math.isnan(x) or math.isnan(y):
            return False
        if mode == "min":
            x, y = -x, -y
        at_least &= x >= y
        better |= x > y
    return at_least and better


def frontier(results: Sequence[TrialResult], objectives: Sequence[tuple[str, str]]) -> list[TrialResult]:
    """The non-dominated trials (equal points are all kept), best score first."""
    front = [r for r in results if not any(dominates(o, r, objectives) for o in results if o is not r)]
    return sorted(front, key=lambda r: (-r.score, r.epoch_time_s))


# -- recommendation ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recommendation:
    trial: TrialResult
    best: TrialResult
    tolerance: float
    cost: str
    searched: tuple[str, ...] = ()

    def describe(self) -> str:
        chosen, best, cost = self.trial, self.best, self.cost
        text = (f"Recommendation: {called(chosen.policy)} ({_params_text(chosen, self.searched)}): "
                f"score {chosen.score:.4f}, "
                f"{cost} {chosen.values.get(cost, math.nan):.4g}, peak memory {chosen.peak_mem_mb:.2f} MB.")
        if chosen is best:
            return text + f" It is also the best score; no trial within {self.tolerance:g} of it costs less."
        ratio = chosen.values.get(cost, math.nan) / best.values.get(cost, math.nan)
        return (text + f" The best score is {best.score:.4f} ({called(best.policy)}); this one is within the "
                f"tolerance of {self.tolerance:g} at {ratio:.0%} of its {cost} and "
                f"{chosen.peak_mem_mb / best.peak_mem_mb:.0%} of its memory.")


def recommend(results: Sequence[TrialResult], tolerance: float, cost: str, searched: Sequence[str] = ()
              ) -> Recommendation | None:
    if not results:
        return None
    best = max(results, key=lambda r: (r.score, -r.values.get(cost, math.inf)))
    eligible = [r for r in results if r.score >= best.score - tolerance - 1e-12]
    chosen = min(eligible, key=lambda r: (r.values.get(cost, math.inf), -r.score))
    return Recommendation(trial=chosen, best=best, tolerance=tolerance, cost=cost, searched=tuple(searched))


def indistinct(results: Sequence[TrialResult]) -> bool:
    """Whether the scores cannot tell the trials apart at all: more than one trial, and every one of them scored
    the same at its best epoch (a detector on random weights at mAP 0.0, a classifier at chance). Not when every
    trial is best at epoch 0: they tie at their common start, the linear probe, which no fine-tune beat (the
    answer is the probe)."""
    scores = [r.score for r in results]
    return (len(scores) > 1 and max(scores) - min(scores) <= 1e-12
            and not all(r.best_epoch == 0 for r in results))


def candidates(records: Sequence[TrialRecord], rule: ReportConfig, searched: Sequence[str], top: int
               ) -> dict[str, dict[str, Any]]:
    """The configurations the confirmation re-runs, each as its searched params (typed), named by the search trial
    it repeats: the best scores' freeze ranges, up to three and one fewer than ``top`` (the race's references: one
    lucky trial of a weaker range is not the only yardstick; each within three times the tolerance of the best)
    and, of the other ranges whose best trial came that near (where a range within the tolerance may land by seed
    noise alone), the cheapest, up to ``top`` in all, the last place kept for the deepest freeze searched (the
    fewest trainable parameters) where early stopping may have hidden it, and where policies were searched
    (``tune.training.policy``) a place for the best hard freeze. Each range (policy) is
    represented by its best trial (its best learning rate, ...); where no freeze key is
    searched, each distinct configuration counts as a range. Only the search's own trials count: after a resume,
    confirmation runs that finished before the stop are records too. None when the scores cannot tell the
    trials apart."""
    results = [r for r in summarise(records) if r.candidate is None]
    if not results or indistinct(results):
        return {}
    by_freeze = any(key in LABELLED_KEYS for key in searched)
    best_of: dict[str, TrialResult] = {}
    for result in sorted(results, key=lambda r: (-r.score, r.values.get(rule.cost, math.inf))):
        key = result.label if by_freeze else json.dumps({k: result.params.get(k) for k in searched}, default=str)
        best_of.setdefault(key, result)
    top_score = next(iter(best_of.values())).score
    ranked = [r for r in best_of.values() if r.score >= top_score - 3 * rule.tolerance]
    references = ranked[:max(1, min(3, top - 1))]
    near = sorted((r for r in ranked if r not in references), key=lambda r: (r.values.get(rule.cost, math.inf),
                                                                            -r.score))
    chosen = [*references, *near][:top]
    # the deepest freeze searched (all but the head, where the space reaches it: the probe fine-tuned) is a
    # candidate whenever early stopping may have hidden it (none of its trials ran every epoch): the cheapest
    # configuration is not lost to a dip in its first epochs; a deepest range that trained to the end and still
    # fell short is judged like any other
    deepest = min(best_of.values(), key=lambda r: (_trainable_params(r), not r.policy.is_hard))  # hard first
    stopped = all(r.stopped_early for r in results if r.label == deepest.label)
    reserved = [deepest] if by_freeze and (stopped or deepest in ranked) else []
    # where policies were searched (tune.training.policy), the best hard freeze is a candidate too: the race then says
    # whether a decay or a thaw is proven better than freezing alone, and a hard freeze within the tolerance and cheaper
    # wins
    hard = next((r for r in best_of.values() if r.policy.is_hard), None)
    if by_freeze and by_policy(results) and hard is not None and hard not in reserved:
        reserved.append(hard)
    extra = [r for r in reserved if r not in chosen][:max(0, top - 1)]
    chosen = [*[r for r in chosen if r not in extra][:top - len(extra)], *extra]
    return {r.name: {k: r.params[k] for k in searched} for r in chosen}


def _trainable_params(result: TrialResult) -> float:
    try:
        return float(result.params["trainable_params"])
    except (KeyError, ValueError):
        return math.inf


def confirmed(results: Sequence[TrialResult], tolerance: float, cost: str, searched: Sequence[str] = (),
              confidence: float = 0.95, budget: int | None = None) -> Decision | None:
    """The race's decision on the confirmation runs (``tune.reporting.race``): proven only where the candidates ran the
    ``budget`` of seeds (None: these runs are the race's last look), then the cheapest candidate proven within
    ``tolerance`` of the best on paired seeds at ``confidence``; otherwise the highest mean (the search's own trial,
    chosen for its luck among others, does not count). None without finished confirmation runs."""
    raced = len({r.candidate for r in results if r.candidate})  # a candidate whose runs all failed counts too
    return decide(confirmation_candidates(results, cost, searched), tolerance, confidence, budget=budget,
                  raced=raced)


def confirmation_candidates(results: Sequence[TrialResult], cost: str, searched: Sequence[str] = ()
                            ) -> list[Candidate]:
    """The confirmation runs grouped by candidate, each with its scores and seeds.

    Only finished runs count, one per (candidate, seed): a run killed or failed part way (a driver stopped during
    the confirmation, then resumed) scores at fewer epochs than the others and would pull its candidate down."""
    groups: dict[str, list[TrialResult]] = {}
    seen = set()
    for r in results:
        key = (r.candidate, r.params.get("seed"))
        if r.candidate and r.status == "FINISHED" and key not in seen:
            seen.add(key)
            groups.setdefault(r.candidate, []).append(r)
    return [Candidate(name=name, policy=runs[0].policy, params_text=_params_text(runs[0], searched),
                      scores=tuple(r.score for r in runs),
                      cost=statistics.fmean(r.values.get(cost, math.nan) for r in runs),
                      runs=tuple(r.name for r in runs), seeds=tuple(_seed(r) for r in runs))
            for name, runs in groups.items()]


def _seed(result: TrialResult) -> int:
    try:
        return int(result.params["seed"])
    except (KeyError, ValueError):
        return hash(result.name)  # no seed logged: a run of its own, paired with nothing


def _others(searched: Sequence[str]) -> list[str]:
    """The searched keys beside the policy's (its label names those: the range, the decay, the thaw)."""
    return [k for k in searched if k not in LABELLED_KEYS]


def _params_text(result: TrialResult, searched: Sequence[str]) -> str:
    others = _others(searched)
    return ", ".join(f"{k}={short(result.params.get(k, '?'))}" for k in others) or "no other searched values"


# -- text -------------------------------------------------------------------------------------------------------
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
    others = _others(searched)
    header = ["", "trial", "policy" if by_policy(results) else "freeze", *others, "score", "best@", "time_s",
              "epoch_s", "mem_mb", "epochs", "status"]
    rows = []
    for r in results:
        status = r.status if not r.stopped_early else f"{r.status} (ASHA stop)"
        rows.append([marks.get(r.name, ""), r.name, r.label, *(short(r.params.get(k, "")) for k in others),
                     f"{r.score:.4f}", str(r.best_epoch), f"{r.time_to_best_s:.2f}", f"{r.epoch_time_s:.3f}",
                     f"{r.peak_mem_mb:.2f}", str(r.epochs_run), status])
    return _table(header, rows)


def by_policy(results: Sequence[TrialResult]) -> bool:
    """Whether more than hard freezing was searched: some trial's policy adds a decay or a thaw to its range."""
    return any(not r.policy.is_hard for r in results)


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
    search: list[TrialResult]
    confirmation: list[TrialResult]
    front: list[TrialResult]
    objectives: list[tuple[str, str]]
    recommendation: Recommendation | None
    decision: Decision | None = None  # the confirmation race's (tune.reporting.race)
    text: str = ""
    reference: float | None = None  # the linear probe's score (probe_score), where the heads started from it
    val_size: int | None = None  # the validation split's examples, which scored every epoch (None: not known)

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
        return next(r for r in self.search if r.name == self.confirmed_choice.name)


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
    report = Report(search=search, confirmation=confirmation, front=front, objectives=front_objectives,
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
