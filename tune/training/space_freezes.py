"""The freezes a search space gives on a model: its freeze dimensions checked against the model's blocks before any
trial (``check_space``, ``check_points``), every distinct set of frozen blocks it can sample (``sampled_freezes``,
what the freeze-aware GPU shares and the LoRA check measure), one trial's (``trial_freeze``), a grid's values
(``grid_values``) and the points a smoke test tries first (``depth_points``, ``window_points``). One freeze resolved
and applied is ``tune.training.freeze``'s.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from tune.blocks import BlockModel
from tune.errors import ConfigError
from tune.settings.space import FREEZE_KEYS, ORDERED_PAIRS, WINDOW, IntRange, in_order, resolve_names
from tune.training.freeze import freeze_keys, resolve, resolve_index

__all__ = ["check_points", "check_space", "depth_points", "grid_values", "sampled_freezes", "trial_freeze",
           "window_points"]


def check_space(space: Mapping[str, Any], train: Any, block_model: BlockModel,
                fixed_in_space: Collection[str] = ()) -> dict[str, Any]:
    """Resolve cut-point names in the freeze dimensions of ``space`` and check every freeze it can sample.

    ``train`` is the TrainConfig holding the fixed values, ``fixed_in_space`` the keys among them given under
    space: (an error names them there). Raises ConfigError before any trial starts.
    """
    n_blocks, cuts = block_model.n_blocks, block_model.named_cut_points()
    resolved = {key: resolve_names(f"space.{key}", dim, lambda k, v: resolve_index(k, v, n_blocks, cuts))
                if key in FREEZE_KEYS else dim for key, dim in space.items()}
    for lower, upper, gap in ORDERED_PAIRS:  # the sampler draws upper from lower + gap up: there must be room
        if lower in resolved and upper in resolved:
            top, high = max(_values(resolved[lower])), max(_values(resolved[upper]))
            if top + gap > high:
                relation = "<=" if gap == 0 else "<"
                raise ConfigError(f"space.{lower}", top, f"a highest {lower} {relation} the highest {upper} ({high}): "
                                  f"each {lower} is drawn with an {upper} above it", problem="no room")
    for combo, values in _freeze_values(resolved, train):
        try:
            resolve(block_model, **values)
        except ConfigError as err:
            key = err.key.split("[")[0]
            where = f"space.{key}" if key in combo or key in fixed_in_space else f"train.{key}"
            raise ConfigError(where, values[key], err.allowed, problem=err.problem) from None
    return resolved


def check_points(points: Iterable[Mapping[str, Any]], space: Mapping[str, Any], block_model: BlockModel
                 ) -> tuple[dict[str, Any], ...]:
    """``search.points_to_evaluate`` with the cut-point names of its freeze keys resolved against the model, each
    within its dimension of the checked space (``check_space``'s result)."""
    n_blocks, cuts = block_model.n_blocks, block_model.named_cut_points()
    resolved = []
    for i, point in enumerate(points):
        point = dict(point)
        for key in FREEZE_KEYS:
            dim = space.get(key)
            if key in point and isinstance(dim, IntRange):
                point[key] = resolve_index(f"search.points_to_evaluate[{i}].{key}", point[key], n_blocks, cuts,
                                           low=int(dim.low), high=int(dim.high))
        resolved.append(point)
    return tuple(resolved)


def depth_points(space: Mapping[str, Any]) -> tuple[dict[str, int], ...]:
    """Points to evaluate first that span a checked space's (``check_space``'s result) freeze depths: the searched
    depth key (``freeze_stop`` or ``freeze``; ``freeze_start`` where it is the only one) at its lowest value, its
    highest and its middle one, each point once. Where ``freeze_start`` is searched beside ``freeze_stop``, the two
    ends keep it at its lowest value (no freeze; the widest range) and the middle point takes its middle value, each
    with a ``freeze_stop`` the sampler could draw after it (start <= stop). A point fixes only freeze keys: the sampler
    draws the rest. None where no freeze key is searched. A space of trained windows gets ``window_points``."""
    if any(key in space for key in WINDOW):
        return window_points(space)
    depth = next((key for key in ("freeze_stop", "freeze", "freeze_start") if key in space), None)
    if depth is None:
        return ()
    with_start = depth != "freeze_start" and "freeze_start" in space
    starts = sorted(set(_values(space["freeze_start"]))) if with_start else [None]

    def point(start: int | None, at: float) -> dict[str, int]:
        """The depth at ``at`` (0 lowest, 1 highest, 0.5 middle) of the values drawn after ``start``."""
        values = sorted({v for v in _values(space[depth]) if start is None or v >= start}) or [start]
        return {**({} if start is None else {"freeze_start": start}), depth: values[int(at * (len(values) - 1) + 0.5)]}

    points = [point(starts[0], 0), point(starts[0], 1), point(starts[len(starts) // 2], 0.5)]
    return tuple({tuple(p.items()): p for p in points}.values())  # each once, in that order


def window_points(space: Mapping[str, Any]) -> tuple[dict[str, int], ...]:
    """Points to evaluate first that span a checked space's trained windows: with both bounds searched, the lowest
    window of one block, the highest (the last block before the head, where the space reaches it), a middle one and
    the widest; with one bound searched, its lowest, highest and middle value. Each point once, in that order."""
    if not all(key in space for key in WINDOW):
        key = next(k for k in WINDOW if k in space)
        values = sorted(set(_values(space[key])))
        return tuple({v: {key: v} for v in (values[0], values[-1], values[len(values) // 2])}.values())
    starts, stops = (sorted(set(_values(space[key]))) for key in WINDOW)

    def narrowest(start: int) -> dict[str, int]:
        """The window from ``start`` to the lowest stop the sampler could draw after it."""
        return {"train_start": start, "train_stop": next((s for s in stops if s > start), stops[-1])}

    top = max((s for s in starts if s < stops[-1]), default=starts[0])
    points = [narrowest(starts[0]), {"train_start": top, "train_stop": stops[-1]}, narrowest(starts[len(starts) // 2]),
              {"train_start": starts[0], "train_stop": stops[-1]}]
    return tuple({tuple(p.items()): p for p in points}.values())


def sampled_freezes(space: Mapping[str, Any], train: Any, block_model: BlockModel) -> dict[tuple[int, ...], dict]:
    """Every distinct set of frozen blocks a checked space (``check_space``'s result) can sample, with the freeze
    keys that give it."""
    found: dict[tuple[int, ...], dict] = {}
    for _, values in _freeze_values(space, train):
        found.setdefault(resolve(block_model, **values).blocks, values)
    return found


def trial_freeze(params: Mapping[str, Any], train: Any, block_model: BlockModel) -> tuple[int, ...]:
    """The frozen blocks of a trial: its sampled params over the fixed values of ``train``."""
    return resolve(block_model, **freeze_keys(train, params)).blocks


def _freeze_values(space: Mapping[str, Any], train: Any) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    """(the searched freeze values, all freeze keys) for every combination the space can sample."""
    fixed = freeze_keys(train)
    candidates = {key: _values(space[key]) for key in fixed if key in space}
    for combo in _combinations(candidates):
        if not in_order(combo):
            continue  # never sampled: the upper bound's floor is the sampled lower one (space.OptunaSpace)
        yield combo, {**fixed, **combo}


def grid_values(dim: Any) -> list[Any]:
    """Every value of a choice or int dimension (names already resolved), for search.algorithm: grid."""
    return _values(dim)


def _values(dim: Any) -> list[Any]:
    if isinstance(dim, IntRange):
        return list(range(int(dim.low), int(dim.high) + 1, dim.step))
    return list(dim.values)


def _combinations(candidates: Mapping[str, list[Any]]) -> Iterable[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in candidates.items():
        combos = [{**combo, key: value} for combo in combos for value in values]
    return combos
