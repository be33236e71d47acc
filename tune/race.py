"""The confirmation as a race on paired seeds: which candidate is proven within the tolerance of the best, which
is proven worse, and which needs more seeds.

Every candidate runs with the same seeds (the same data order, head and dropout noise), so the comparison with the
best candidate uses the per-seed differences: the noise a seed shares across candidates cancels. A candidate is
**proven within** the tolerance when the one-sided upper confidence bound on (best mean - its mean), Student's t
over its paired differences at ``confidence``, is at most the tolerance (a non-inferiority test); **proven worse**
when the lower bound is above the tolerance; **undecided** otherwise. The recommendation is the cheapest candidate
proven within (the best is, trivially).

Seeds run in rounds: the first round's seeds for every candidate, then one seed at a time for the best and the
undecided candidates cheaper than the recommendation, until nothing cheaper is undecided (decided) or the seed
budget is spent (undecided: the cheapest proven candidate stands). Each comparison is one test at ``confidence``;
the tests over several candidates and rounds are not corrected for multiplicity (benchmarks/recommendation.py
measures how often the answer lands within the tolerance of the exhaustive grid's best).

Pure Python: no Ray, no MLflow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Candidate", "Comparison", "Decision", "decide", "race", "t_quantile"]

WITHIN, WORSE, UNDECIDED, BEST = "within", "worse", "undecided", "best"


def t_quantile(confidence: float, df: int) -> float:
    """Student's t quantile: P(T <= value) = ``confidence`` with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(confidence, df))


@dataclass(frozen=True)
class Candidate:
    """A configuration re-run with fresh seeds by the confirmation: its score and run per seed."""

    name: str  # the search trial it repeats
    freeze_range: str  # its freeze range, or its policy (tune.policy) where that adds a decay or a thaw
    params_text: str
    scores: tuple[float, ...]
    cost: float  # mean over the seeds
    runs: tuple[str, ...] = ()  # the confirmation runs' trial names, one per seed
    seeds: tuple[int, ...] = ()  # the seed of each score (paired comparisons match them)

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
        return dict(zip(self.seeds, self.scores, strict=True))


@dataclass(frozen=True)
class Comparison:
    """A candidate against the best, over the seeds both ran: the mean gap (best - candidate), its paired standard
    error and the unpaired one (the two means' own errors, for comparison), the one-sided bounds at the
    confidence, and the verdict."""

    name: str
    seeds: int
    gap: float
    paired_se: float
    unpaired_se: float
    upper: float
    lower: float
    verdict: str  # best | within | worse | undecided


@dataclass(frozen=True)
class Decision:
    chosen: Candidate  # the cheapest candidate proven within the tolerance (the best, if no cheaper one is)
    best: Candidate  # the highest mean among the candidates that ran the most seeds (the race's reference)
    comparisons: dict[str, Comparison]
    racing: tuple[str, ...]  # who runs the next round: the best and the undecided candidates cheaper than chosen
    tolerance: float
    confidence: float
    candidates: list[Candidate] = field(default_factory=list)  # best mean first

    @property
    def decided(self) -> bool:
        return len(self.racing) <= 1

    @property
    def undecided(self) -> list[Candidate]:
        return [c for c in self.candidates if self.comparisons[c.name].verdict == UNDECIDED]


def compare(best: Candidate, other: Candidate, tolerance: float, confidence: float) -> Comparison:
    """``other`` against ``best`` over the seeds both ran (see the module's docstring)."""
    if other is best:
        return Comparison(best.name, len(best.scores), 0.0, 0.0, 0.0, 0.0, 0.0, BEST)
    mine, theirs = best.by_seed(), other.by_seed()
    common = sorted(set(mine) & set(theirs))
    gaps = [mine[s] - theirs[s] for s in common]
    unpaired = (math.sqrt(statistics.variance([mine[s] for s in common]) / len(common)
                          + statistics.variance([theirs[s] for s in common]) / len(common))
                if len(common) > 1 else math.nan)
    if len(gaps) < 2:
        gap = statistics.fmean(gaps) if gaps else math.nan
        return Comparison(other.name, len(gaps), gap, math.nan, unpaired, math.inf, -math.inf, UNDECIDED)
    gap = statistics.fmean(gaps)
    se = statistics.stdev(gaps) / math.sqrt(len(gaps))
    half = t_quantile(confidence, len(gaps) - 1) * se
    upper, lower = gap + half, gap - half
    verdict = WITHIN if upper <= tolerance + 1e-12 else WORSE if lower > tolerance + 1e-12 else UNDECIDED
    return Comparison(other.name, len(gaps), gap, se, unpaired, upper, lower, verdict)


def decide(found: Sequence[Candidate], tolerance: float, confidence: float) -> Decision | None:
    """The race's state on the scores so far (None without candidates): every candidate compared with the best,
    the recommendation, and who runs next."""
    if not found:
        return None
    most = max(len(c.scores) for c in found)
    best = max((c for c in found if len(c.scores) == most), key=lambda c: (c.mean, -c.cost))
    comparisons = {c.name: compare(best, c, tolerance, confidence) for c in found}
    proven = [c for c in found if comparisons[c.name].verdict in (BEST, WITHIN)]
    chosen = min(proven, key=lambda c: (c.cost, -c.mean))
    racing = [best.name] + [c.name for c in sorted(found, key=lambda c: c.cost)
                            if comparisons[c.name].verdict == UNDECIDED and c.cost < chosen.cost]
    return Decision(chosen=chosen, best=best, comparisons=comparisons, racing=tuple(racing), tolerance=tolerance,
                    confidence=confidence, candidates=sorted(found, key=lambda c: -c.mean))


RunRound = Callable[[Mapping[str, Sequence[int]], int], Sequence[Candidate]]


def race(names: Sequence[str], seeds: Sequence[int], first: int, run_round: RunRound, tolerance: float,
         confidence: float) -> Decision | None:
    """Run the race: round 1 gives every candidate in ``names`` the first ``first`` of ``seeds``, each later round
    the next seed to the racing ones, until decided or ``seeds`` are spent. ``run_round(plan, number)`` runs the
    (candidate, seed) pairs of ``plan`` not yet run (a resumed race: the finished ones are not repeated) and
    returns every candidate with all its scores so far. The last round's decision, or None if nothing scored."""
    racing, used, number, decision = list(names), 0, 0, None
    while used < len(seeds) and racing:
        number += 1
        new = list(seeds[used:used + (first if number == 1 else 1)])
        used += len(new)
        decision = decide(run_round({name: new for name in racing}, number), tolerance, confidence)
        if decision is None or decision.decided:
            break
        racing = list(decision.racing)
    return decision
