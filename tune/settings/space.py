"""The search-space vocabulary of the YAML files, and its translation to Optuna, in one place.

A key under ``space:`` is a training parameter (``lr``, ``freeze_stop``, ...). Its value is either a plain
value (held fixed) or a mapping with a ``type``:

    {type: int,    low: 0, high: 7}              integers low..high, both bounds included (step: 1)
    {type: float,  low: 1.0e-4, high: 1.0e-2, log: true}   reals in [low, high]; log: sample log-uniformly
    {type: choice, values: [none, backbone, 3]}  one of the listed values (scalars)

Bounds are inclusive, as in Optuna's ``suggest_int`` / ``suggest_float``. Freeze keys may use a model's
named cut points (``none``, ``backbone``, ``all_but_head``) in bounds and choices; they are resolved to
block indices against the task's model before any trial starts (``resolve_names``).

A freeze range is ``[freeze_start, freeze_stop)``: ``freeze_start <= freeze_stop``; a trained window is
``[train_start, train_stop)``: ``train_start < train_stop`` (an empty window trains nothing but the head). These are
the ordering rules (``ORDERED_PAIRS``, ``in_order``), kept here and used by the sampler (when both keys of a pair are
searched, the upper one is sampled from ``max(lower + gap, low)..high``: ``OptunaSpace``), the freeze engine and the
config checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tune.errors import ConfigError

__all__ = ["ADAPTER_KEYS", "FREEZE_KEYS", "LABELLED_KEYS", "ORDERED", "ORDERED_PAIRS", "POLICY_KEYS", "WINDOW",
           "Choice", "Dimension", "FloatRange", "IntRange", "OptunaSpace", "in_order", "is_int", "parse_dimension",
           "resolve_names"]

# (lower, upper): two training parameters whose values satisfy lower <= upper in every trial.
ORDERED = ("freeze_start", "freeze_stop")
# (lower, upper): the trained window [train_start, train_stop), the blocks a trial trains besides its head
WINDOW = ("train_start", "train_stop")
# (lower, upper, gap): the ordered pairs, lower + gap <= upper in every trial (a window holds at least one block)
ORDERED_PAIRS = ((*ORDERED, 0), (*WINDOW, 1))
# The training parameters that say what a trial freezes (tune.training.freeze); they may hold a model's cut-point names.
FREEZE_KEYS = ("freeze", *ORDERED, *WINDOW)
# The training parameters of a policy beyond its frozen range (tune.training.policy) and of its adapter
# (tune.training.adapter); with FREEZE_KEYS, the keys a policy's label names (tables and run names leave them).
POLICY_KEYS = ("layer_decay", "unfreeze_epoch", "unfreeze_every")
ADAPTER_KEYS = ("adapter", "lora_rank", "lora_alpha", "lora_dropout")
LABELLED_KEYS = (*FREEZE_KEYS, *POLICY_KEYS, *ADAPTER_KEYS)


def in_order(values: Mapping[str, Any]) -> bool:
    """Whether ``values`` keep ``ORDERED_PAIRS``: true for a pair where either key is missing or None (freeze_stop
    null: no range) or not yet an index (a cut-point name)."""
    for lower_key, upper_key, gap in ORDERED_PAIRS:
        lower, upper = values.get(lower_key), values.get(upper_key)
        if is_int(lower) and is_int(upper) and lower + gap > upper:
            return False
    return True

@dataclass(frozen=True)
class IntRange:
    low: int | str
    high: int | str
    step: int = 1


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


Dimension = IntRange | FloatRange | Choice

_ALLOWED_TYPES = "int, float, choice"


def is_int(value: Any) -> bool:
    """An int that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_dimension(key: str, raw: Mapping[str, Any], *, names_allowed: bool) -> Dimension:
    """Parse one ``space:`` entry given as a mapping (a plain value is a fixed value, handled by config)."""
    kind = raw.get("type")
    if kind is None:
        raise ConfigError(f"{key}.type", None, f"one of {_ALLOWED_TYPES}", problem="missing")
    expected = {"int": {"type", "low", "high", "step"}, "float": {"type", "low", "high", "log"},
                "choice": {"type", "values"}}
    if kind not in expected:
        raise ConfigError(f"{key}.type", kind, f"one of {_ALLOWED_TYPES}")
    unknown = sorted(set(raw) - expected[kind])
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", raw[unknown[0]], f"keys {sorted(expected[kind])} for type {kind}",
                          problem="unknown key")
    if kind == "choice":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key}.values", values, "a non-empty list")
        for i, value in enumerate(values):
            if isinstance(value, (list, dict)):
                raise ConfigError(f"{key}.values[{i}]", value, "a number, string, bool or null (Optuna's choices)")
        return Choice(tuple(values))
    for bound in ("low", "high"):
        if bound not in raw:
            raise ConfigError(f"{key}.{bound}", None, f"a number (type {kind} needs low and high)", problem="missing")
    low, high = raw["low"], raw["high"]
    if kind == "int":
        for bound, value in (("low", low), ("high", high)):
            if not (is_int(value) or (names_allowed and isinstance(value, str))):
                allowed = "an integer or a cut-point name" if names_allowed else "an integer"
                raise ConfigError(f"{key}.{bound}", value, allowed)
        step = raw.get("step", 1)
        if not is_int(step) or step < 1:
            raise ConfigError(f"{key}.step", step, "an integer >= 1")
        if is_int(low) and is_int(high):  # names are resolved against the model later (resolve_names)
            _check_bounds(key, low, high)
        return IntRange(low, high, step)
    for bound, value in (("low", low), ("high", high)):
        if not _is_number(value) or not math.isfinite(value):
            raise ConfigError(f"{key}.{bound}", value, "a finite number")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log", log, "true or false")
    _check_bounds(key, low, high)
    if log and low <= 0:
        raise ConfigError(f"{key}.low", low, "a number > 0 when log: true")
    return FloatRange(float(low), float(high), log)


def _check_bounds(key: str, low: Any, high: Any, given: tuple[Any, Any] | None = None) -> None:
    """Bounds are inclusive and ordered: low <= high (``given``: the bounds as written, before names resolved)."""
    if low > high:
        shown_low, shown_high = given or (low, high)
        resolved = f" (resolved: {low} > {high})" if given else ""
        raise ConfigError(key, {"low": shown_low, "high": shown_high}, f"low <= high{resolved}")


def resolve_names(key: str, dim: Dimension, resolve: Callable[[str, Any], int]) -> Dimension:
    """Resolve cut-point names inside a freeze dimension to block indices; ``resolve`` checks each value."""
    if isinstance(dim, IntRange):
        low, high = resolve(f"{key}.low", dim.low), resolve(f"{key}.high", dim.high)
        _check_bounds(key, low, high, given=(dim.low, dim.high))
        return IntRange(low, high, dim.step)
    if isinstance(dim, Choice):
        return Choice(tuple(resolve(f"{key}.values[{i}]", v) for i, v in enumerate(dim.values)))
    raise ConfigError(f"{key}.type", "float", "int or choice (a freeze bound is a block index)")


class OptunaSpace:
    """A define-by-run function for ``OptunaSearch`` that samples every dimension of a space.

    A class rather than a closure so that Tune can pickle the searcher into its experiment checkpoint.
    """

    def __init__(self, space: Mapping[str, Dimension]) -> None:
        # the lower key of each ordered pair is sampled first so that the upper one's floor is known
        lowers = {lower for lower, _, _ in ORDERED_PAIRS}
        self.items = sorted(space.items(), key=lambda kv: kv[0] not in lowers)
        self.floor = {upper: (lower, gap) for lower, upper, gap in ORDERED_PAIRS}

    def __call__(self, trial: Any) -> None:
        sampled: dict[str, Any] = {}
        for key, dim in self.items:
            if isinstance(dim, IntRange):
                low = int(dim.low)
                lower, gap = self.floor.get(key, (None, 0))
                if lower in sampled:
                    low = max(low, sampled[lower] + gap)
                sampled[key] = trial.suggest_int(key, low, max(int(dim.high), low), step=dim.step)
            elif isinstance(dim, FloatRange):
                sampled[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
            else:
                sampled[key] = trial.suggest_categorical(key, list(dim.values))

