"""What a search found, as numbers: every trial at its best epoch (``summarise``), the frontier, the single-trial
recommendation, the confirmation's candidates and the race's decision on their runs (``confirmed``). The report's
text is tune.reporting.report's.

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

__all__ = ["DEFAULT_FRONTIER", "POLICY_FRONTIER", "Recommendation", "TrialResult", "by_policy", "called",
           "candidates", "confirmation_candidates", "confirmed", "dominates", "frontier", "indistinct",
           "other_searched", "params_text", "recommend", "summarise", "value_at_best"]

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


def by_policy(results: Sequence[TrialResult]) -> bool:
    """Whether more than hard freezing was searched: some trial's policy adds a decay or a thaw to its range."""
    return any(not r.policy.is_hard for r in results)


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
        text = (f"Recommendation: {called(chosen.policy)} ({params_text(chosen, self.searched)}): "
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
    return [Candidate(name=name, policy=runs[0].policy, params_text=params_text(runs[0], searched),
                      scores=tuple(r.score for r in runs),
                      cost=statistics.fmean(r.values.get(cost, math.nan) for r in runs),
                      runs=tuple(r.name for r in runs), seeds=tuple(_seed(r) for r in runs))
            for name, runs in groups.items()]


def _seed(result: TrialResult) -> int:
    try:
        return int(result.params["seed"])
    except (KeyError, ValueError):
        return hash(result.name)  # no seed logged: a run of its own, paired with nothing


def other_searched(searched: Sequence[str]) -> list[str]:
    """The searched keys beside the policy's (its label names those: the range, the decay, the thaw)."""
    return [k for k in searched if k not in LABELLED_KEYS]


def params_text(result: TrialResult, searched: Sequence[str]) -> str:
    others = other_searched(searched)
    return ", ".join(f"{k}={short(result.params.get(k, '?'))}" for k in others) or "no other searched values"
