"""The confirmation race (tune.race) on hand-made score tables: who is dropped, when it stops, what a resumed race
runs."""

from __future__ import annotations

import pytest

from tune.race import Candidate, decide, race

COST = {"expensive": 3.0, "middle": 2.0, "cheap": 1.0}


class Table:
    """A fake confirmation: a score per (candidate, seed) from ``scores``; records what ran."""

    def __init__(self, scores, stop_after_round: int | None = None, done: dict | None = None):
        self.scores, self.stop_after_round = scores, stop_after_round
        self.done = dict(done or {})  # (name, seed) -> score: runs that finished
        self.ran: list[tuple[str, int]] = []
        self.rounds: list[dict] = []

    def __call__(self, plan, number):
        self.rounds.append({name: list(seeds) for name, seeds in plan.items()})
        for name, seeds in plan.items():
            for seed in seeds:
                if (name, seed) not in self.done:
                    self.ran.append((name, seed))
                    self.done[(name, seed)] = self.scores(name, seed)
        if self.stop_after_round == number:
            raise KeyboardInterrupt
        return [Candidate(name, f"[0, {i})", "", tuple(self.done[(n, s)] for n, s in sorted(self.done) if n == name),
                          COST[name], seeds=tuple(s for n, s in sorted(self.done) if n == name))
                for i, name in enumerate(sorted({n for n, _ in self.done}))]


def noise(seed: int) -> float:
    return [0.010, -0.012, 0.004, -0.003, 0.008, -0.007, 0.001, -0.009, 0.006, -0.002][seed - 1]


def table_of(gap: float, spread: float):
    """expensive is best; middle trails it by ``gap`` ± ``spread`` (beside the seed noise all share); cheap by
    0.05."""
    def scores(name: str, seed: int) -> float:
        own = {"expensive": 0.0, "middle": -gap + spread * (-1) ** seed, "cheap": -0.05}[name]
        return 0.95 + noise(seed) + own
    return scores


clear_table = table_of(0.004, 0.003)


SEEDS = list(range(1, 11))


def test_the_race_drops_a_worse_candidate_and_stops_once_a_cheaper_one_is_proven():
    table = Table(clear_table)
    decision = race(["expensive", "middle", "cheap"], SEEDS, 3, table, tolerance=0.01, confidence=0.95)
    assert table.rounds[0] == {name: [1, 2, 3] for name in ("expensive", "middle", "cheap")}
    # after 3 seeds cheap is proven worse (0.05 below on every seed) and leaves the race; middle (gaps 0.007, 0.001,
    # 0.007) is not yet proven within 0.01, so it and the best run seed 4, and so on until it is
    assert all(set(plan) == {"expensive", "middle"} for plan in table.rounds[1:])
    assert decision.decided and decision.chosen.name == "middle" and decision.comparisons["cheap"].verdict == "worse"
    assert decision.comparisons["middle"].upper <= 0.01 < decide(
        [Candidate(c.name, c.freeze_range, "", c.scores[:3], c.cost, seeds=c.seeds[:3]) for c in decision.candidates],
        0.01, 0.95).comparisons["middle"].upper
    assert len(table.rounds) < len(SEEDS) - 2  # decided before the budget
    assert len(table.ran) == len(set(table.ran))


def test_a_race_that_cannot_tell_the_gap_from_the_tolerance_ends_undecided_at_its_budget():
    def borderline(name: str, seed: int) -> float:  # middle trails by 0.01 ± 0.006: never within, never beyond
        own = {"expensive": 0.0, "middle": -0.010 + 0.006 * (-1) ** seed, "cheap": -0.05}[name]
        return 0.95 + noise(seed) + own

    table = Table(borderline)
    decision = race(["expensive", "middle", "cheap"], SEEDS, 3, table, tolerance=0.01, confidence=0.95)
    assert not decision.decided and decision.chosen.name == "expensive"
    assert [c.name for c in decision.undecided] == ["middle"]
    assert len(table.rounds) == 8 and len(decision.best.scores) == 10  # 3 seeds, then 7 rounds of one


def test_a_killed_race_resumes_without_running_a_seed_twice_and_reaches_the_same_answer():
    slower = table_of(0.006, 0.004)  # decided in round 4
    whole = Table(slower)
    expected = race(["expensive", "middle", "cheap"], SEEDS, 3, whole, tolerance=0.01, confidence=0.95)
    assert len(whole.rounds) == 4
    killed = Table(slower, stop_after_round=2)
    with pytest.raises(KeyboardInterrupt):
        race(["expensive", "middle", "cheap"], SEEDS, 3, killed, tolerance=0.01, confidence=0.95)
    resumed = Table(slower, done=killed.done)  # what finished before the stop
    decision = race(["expensive", "middle", "cheap"], SEEDS, 3, resumed, tolerance=0.01, confidence=0.95)
    assert resumed.rounds == whole.rounds  # the same rounds replayed
    assert not set(resumed.ran) & set(killed.ran)  # nothing that finished ran again
    assert sorted(killed.ran + resumed.ran) == sorted(whole.ran)
    assert (decision.chosen.name, decision.chosen.scores) == (expected.chosen.name, expected.chosen.scores)
