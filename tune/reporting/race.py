"""The confirmation as a race on paired seeds, with a promise that holds: at most ``1 - confidence`` of races end
with a recommendation called proven whose true mean is more than the tolerance below the best candidate's, whatever
the true means and the spreads, counting every candidate and every round, for seed noise near normal (heavy tails,
such as runs that collapse on a few seeds, are outside it: ``benchmarks/race_error.py --limits``). Where it cannot
prove anything, it says so and recommends the highest mean.

**The test** (multiple comparisons with the best, Hsu 1981, with Bonferroni's bound). Every candidate runs the
same seeds, so candidate ``j`` against candidate ``i`` is judged by their per-seed differences, where the noise a
seed shares across candidates cancels. With ``K`` candidates, ``i`` is **proven within** the tolerance when, for
every other candidate ``j``, the one-sided upper bound on ``mean_j - mean_i`` (Student's t over the paired
differences at ``1 - alpha / (K - 1)``, alpha = 1 - confidence) is at most the tolerance: then ``i`` is within the
tolerance of whichever candidate is truly best. A recommendation more than the tolerance below the truly best
candidate ``b`` is called proven only if its test against ``b`` erred, which happens with probability at most
``alpha / (K - 1)`` for each of the at most ``K - 1`` such candidates: at most ``alpha`` in all. Each pair's test
uses its own paired differences only, so the bound holds whatever each candidate's spread and whatever the
seeds share.

**One look.** A candidate is called proven only once the race has its full budget of seeds, so the test is made
once and rounds add no error. Earlier rounds may only end the race as hopeless (a futility stop, which never
claims anything): when no candidate's predictive chance of being proven at the budget, at the means and spread
seen so far, reaches ``futility``, more seeds would be spent on an answer that stays undecided.

**The answer.** Proven: the cheapest candidate proven within. Not proven (at the budget, or stopped as hopeless):
the highest mean, with about how many more seeds a decision would take at the spread seen.

``benchmarks/race_error.py`` runs this code on synthetic candidates whose true means are known and prints the rate
of wrong-and-called-proven per setting. Pure Python: no Ray, no MLflow.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from tune.settings.policy import Policy

__all__ = ["Candidate", "Comparison", "Decision", "decide", "race", "t_quantile"]

WITHIN, WORSE, UNDECIDED = "within", "worse", "undecided"
PROVEN, BUDGET, FUTILE, SINGLE = "proven", "budget", "futile", "single"  # how a race ended
FUTILITY = 0.1  # the predictive chance of a decision at the budget below which the race stops early
MOST_SEEDS = 1000  # more_seeds looks no further


@functools.lru_cache(maxsize=4096)
def t_quantile(confidence: float, df: int) -> float:
    """Student's t quantile: P(T <= value) = ``confidence`` with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(confidence, df))


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


@dataclass(frozen=True, init=False)
class Candidate:
    """A configuration re-run with fresh seeds by the confirmation: its score and run per seed. ``policy`` is its
    policy as data (tune.settings.policy: the freeze and what a policy adds; None where a caller gives the label
    alone) and ``label`` its label; ``freeze_range`` is the label by its other name (a keyword of the constructor
    too)."""

    name: str  # the search trial it repeats
    label: str
    params_text: str
    scores: tuple[float, ...]
    cost: float  # mean over the seeds
    runs: tuple[str, ...] = ()  # the confirmation runs' trial names, one per seed
    seeds: tuple[int, ...] = ()  # the seed of each score (paired comparisons match them)
    policy: Policy | None = None

    def __init__(self, name: str, label: str | None = None, params_text: str = "", scores: tuple[float, ...] = (),
                 cost: float = math.nan, runs: tuple[str, ...] = (), seeds: tuple[int, ...] = (), *,
                 freeze_range: str | None = None, policy: Policy | None = None) -> None:
        if label is None and freeze_range is None and policy is not None:
            label = policy.label
        if (label is None) == (freeze_range is None):
            raise TypeError("Candidate takes its policy, its label or its label as freeze_range: one of them")
        for key, value in (("name", name), ("label", label if label is not None else freeze_range),
                           ("params_text", params_text), ("scores", tuple(scores)), ("cost", cost),
                           ("runs", tuple(runs)), ("seeds", tuple(seeds)), ("policy", policy)):
            object.__setattr__(self, key, value)

    @property
    def freeze_range(self) -> str:
        """The label, by its other name (read-only)."""
        return self.label

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else math.nan

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(len(self.scores)) if len(self.scores) > 1 else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % interval of the mean (Student's t over the seeds; unbounded with one seed)."""
        if len(self.scores) < 2:
            return -math.inf, math.inf
        half = t_quantile(0.975, len(self.scores) - 1) * self.se
        return self.mean - half, self.mean + half

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds or range(len(self.scores)), self.scores, strict=True))


@dataclass(frozen=True)
class Pair:
    """Candidate ``other`` against candidate ``mine`` over the seeds both ran: the differences other - mine."""

    other: str
    n: int
    mean: float
    sd: float  # of the per-seed differences (nan below 2 seeds)

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n > 1 else math.nan

    def upper(self, level: float) -> float:
        """One-sided upper bound on (other's mean - mine) at ``level``."""
        return self.mean + t_quantile(level, self.n - 1) * self.se if self.n > 1 else math.inf

    def lower(self, level: float) -> float:
        return self.mean - t_quantile(level, self.n - 1) * self.se if self.n > 1 else -math.inf


def _pair(mine: Candidate, other: Candidate) -> Pair:
    a, b = mine.by_seed(), other.by_seed()
    diffs = [b[s] - a[s] for s in sorted(set(a) & set(b)) if math.isfinite(a[s]) and math.isfinite(b[s])]
    if not diffs:
        return Pair(other.name, 0, math.nan, math.nan)
    return Pair(other.name, len(diffs), statistics.fmean(diffs),
                statistics.stdev(diffs) if len(diffs) > 1 else math.nan)


@dataclass(frozen=True)
class Comparison:
    """A candidate against all the others over the seeds each pair ran. ``gap`` (highest mean - its mean),
    ``paired_se`` and ``unpaired_se`` are against the highest mean; ``upper`` is the simultaneous bound on how far
    below the best candidate it is (the largest of its one-sided bounds against each other candidate, at the
    race's per-comparison level), ``lower`` the largest lower bound (above the tolerance: proven worse), ``against``
    the candidate that gives ``upper``."""

    name: str
    seeds: int
    gap: float
    paired_se: float
    unpaired_se: float
    upper: float
    lower: float
    verdict: str  # within | worse | undecided (at the race's level; a claim only when the race is decided)
    against: str = ""


@dataclass(frozen=True)
class Decision:
    """The race's state: every candidate compared with the others, the recommendation, whether it is proven."""

    chosen: Candidate  # proven: the cheapest candidate proven within; otherwise the highest mean
    best: Candidate  # the highest mean
    comparisons: dict[str, Comparison]
    racing: tuple[str, ...]  # who runs the next round (every candidate until the race ends)
    tolerance: float
    confidence: float
    candidates: list[Candidate] = field(default_factory=list)  # highest mean first
    decided: bool = False  # the recommendation is proven within the tolerance of the best candidate
    ended: str = ""  # proven | budget | futile | single ("" while the race runs)
    budget: int = 0  # seeds per candidate at the decision's look
    level: float = 0.0  # each comparison's one-sided level: 1 - (1 - confidence) / (K - 1)
    chance: float = math.nan  # the best candidate's predictive chance of being proven at the budget
    more_seeds: int | None = None  # about how many more seeds a decision would take at the spread seen
    prospect: str | None = None  # the candidate ``more_seeds`` is for
    absent: int = 0  # candidates of the race without a finished run (nothing is proven against them)

    @property
    def undecided(self) -> list[Candidate]:
        return [c for c in self.candidates if self.comparisons[c.name].verdict == UNDECIDED]

    @property
    def seeds(self) -> int:
        """Seeds per candidate so far (the most any candidate ran)."""
        return max(len(c.scores) for c in self.candidates)


def _comparison(me: Candidate, pairs: Sequence[Pair], best: Candidate, tolerance: float, level: float
                ) -> Comparison:
    if not pairs:  # the only candidate
        return Comparison(me.name, len(me.scores), 0.0, 0.0, 0.0, -math.inf, -math.inf, WITHIN)
    bound = max(pairs, key=lambda p: p.upper(level))
    upper, lower = bound.upper(level), max(p.lower(level) for p in pairs)
    verdict = WITHIN if upper <= tolerance + 1e-12 else WORSE if lower > tolerance + 1e-12 else UNDECIDED
    if me is best:
        gap, paired_se, unpaired_se = 0.0, 0.0, 0.0
    else:
        to_best = next(p for p in pairs if p.other == best.name)
        gap, paired_se = to_best.mean, to_best.se
        mine, theirs = me.by_seed(), best.by_seed()
        common = sorted(set(mine) & set(theirs))
        unpaired_se = (math.sqrt(statistics.variance([theirs[s] for s in common]) / len(common)
                                 + statistics.variance([mine[s] for s in common]) / len(common))
                       if len(common) > 1 else math.nan)
    return Comparison(me.name, min(p.n for p in pairs), gap, paired_se, unpaired_se, upper, lower, verdict,
                      bound.other)


def _chance(pairs: Sequence[Pair], budget: int, tolerance: float, level: float) -> float:
    """The predictive chance that a candidate is proven at ``budget`` seeds, at its pairs' means and spreads so
    far (each pair's, the smallest of them): the final mean difference of a pair is normal around today's with
    the variance of the seeds still to come and of today's estimate."""
    chance = 1.0
    for p in pairs:
        if p.n < 2 or budget < 2:
            return 1.0 if p.n < 2 else 0.0  # nothing to judge by yet
        if p.sd == 0:
            final = p.mean <= tolerance - 1e-12
            chance = min(chance, 1.0 if final else 0.0)
            continue
        need = tolerance - t_quantile(level, budget - 1) * p.sd / math.sqrt(budget)
        rest = max(budget - p.n, 0)
        spread = p.sd * math.sqrt(rest / budget ** 2 + (rest / budget) ** 2 / p.n)
        if spread == 0:
            chance = min(chance, 1.0 if p.mean <= need + 1e-12 else 0.0)
        else:
            chance = min(chance, _normal_cdf((need - p.mean) / spread))
    return chance


def _seeds_needed(pairs: Sequence[Pair], tolerance: float, level: float) -> int | None:
    """The fewest seeds at which every pair's bound would be within the tolerance, were its mean difference and
    spread to stay as seen (None where a mean difference already exceeds the tolerance)."""
    if any(p.n < 2 or p.mean >= tolerance for p in pairs):
        return None
    for n in range(2, MOST_SEEDS + 1):
        if all(p.mean + t_quantile(level, n - 1) * p.sd / math.sqrt(n) <= tolerance + 1e-12 for p in pairs):
            return n
    return None


def decide(found: Sequence[Candidate], tolerance: float, confidence: float, budget: int | None = None,
           futility: float = FUTILITY, raced: int | None = None) -> Decision | None:
    """The race's state on the scores so far (None without candidates). ``budget``: the seeds per candidate at
    which the race decides (None: these scores are the last look); a recommendation is proven only there, where
    every pair of candidates has that many seeds in common. ``raced``: how many candidates the race ran (None:
    those found); one whose runs all failed leaves the others unproven, as a lone candidate is."""
    if not found:
        return None
    level = 1 - (1 - confidence) / max(len(found) - 1, 1)
    seeds = max(len(c.scores) for c in found)
    budget = seeds if budget is None else budget
    best = max(found, key=lambda c: (c.mean, -c.cost))
    pairs = {c.name: [_pair(c, o) for o in found if o is not c] for c in found}
    comparisons = {c.name: _comparison(c, pairs[c.name], best, tolerance, level) for c in found}
    ordered = sorted(found, key=lambda c: -c.mean)
    if len(found) == 1:  # nothing to compare with: confirmed, not proven
        return Decision(best, best, comparisons, (), tolerance, confidence, ordered, decided=False, ended=SINGLE,
                        budget=budget, level=level, chance=math.nan, absent=max((raced or 0) - 1, 0))
    final = all(p.n >= budget for group in pairs.values() for p in group)
    absent = max((raced or 0) - len(found), 0)
    proven = [c for c in found if comparisons[c.name].verdict == WITHIN]
    chances = {c.name: _chance(pairs[c.name], budget, tolerance, level) for c in found}
    needed = {c.name: _seeds_needed(pairs[c.name], tolerance, level) for c in found}
    hopeful = [c for c in found if needed[c.name] is not None]
    prospect = min(hopeful, key=lambda c: (needed[c.name], c.cost)) if hopeful else None
    more = max(needed[prospect.name] - seeds, 1) if prospect is not None else None
    chance = max(chances.values())
    if final and proven and not absent:
        chosen = min(proven, key=lambda c: (c.cost, -c.mean))
        return Decision(chosen, best, comparisons, (), tolerance, confidence, ordered, decided=True, ended=PROVEN,
                        budget=budget, level=level, chance=chance)
    ended = BUDGET if final else FUTILE if chance < futility else ""
    return Decision(best, best, comparisons, () if ended else tuple(c.name for c in found), tolerance, confidence,
                    ordered, decided=False, ended=ended, budget=budget, level=level, chance=chance,
                    more_seeds=more, prospect=prospect.name if prospect is not None else None, absent=absent)


def _until(candidate: Candidate, seeds: Sequence[int]) -> Candidate:
    """``candidate`` with only its scores on ``seeds``: a resumed race decides each round on what that round had."""
    kept = [i for i, seed in enumerate(candidate.seeds) if seed in seeds] if candidate.seeds else \
        list(range(min(len(candidate.scores), len(seeds))))
    return replace(candidate, scores=tuple(candidate.scores[i] for i in kept),
                   runs=tuple(candidate.runs[i] for i in kept) if len(candidate.runs) == len(candidate.scores)
                   else candidate.runs,
                   seeds=tuple(candidate.seeds[i] for i in kept) if candidate.seeds else ())


RunRound = Callable[[Mapping[str, Sequence[int]], int], Sequence[Candidate]]


def race(names: Sequence[str], seeds: Sequence[int], first: int, run_round: RunRound, tolerance: float,
         confidence: float, futility: float = FUTILITY) -> Decision | None:
    """Run the race: round 1 gives every candidate in ``names`` the first ``first`` of ``seeds``, each later round
    the next seed to every candidate, until the budget (``len(seeds)`` seeds each, where the race decides) or a
    futility stop. ``run_round(plan, number)`` runs the (candidate, seed) pairs of ``plan`` not yet run (a resumed
    race: the finished ones are not repeated) and returns every candidate with all its scores so far. The last
    round's decision, or None if nothing scored."""
    racing, used, number, decision = list(names), 0, 0, None
    while used < len(seeds) and racing:
        number += 1
        new = list(seeds[used:used + (max(first, 1) if number == 1 else 1)])
        used += len(new)
        ran = [_until(c, seeds[:used]) for c in run_round({name: new for name in racing}, number) if c.name in names]
        found = [c for c in ran if c.scores]
        decision = decide(found, tolerance, confidence, budget=len(seeds), futility=futility, raced=len(names))
        if decision is None or decision.ended:
            break
        racing = list(decision.racing)
    return decision
