"""The rules across keys of a config: a trained window stands alone, a thaw comes before the last epoch, LoRA
neither thaws nor decays, the points to evaluate name searched keys with values their dimensions take, and the
latest thaw a trial can have. Each problem is one ConfigError naming the key where the user wrote it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from tune.errors import ConfigError
from tune.settings.fields import _TRAIN_RULES, _type_name
from tune.settings.space import FREEZE_KEYS, ORDERED, ORDERED_PAIRS, WINDOW, Choice, Dimension, FloatRange, IntRange

if TYPE_CHECKING:
    from tune.settings.config import Config, SearchConfig, TrainConfig

__all__ = ["latest_thaw"]


def latest_thaw(cfg: Config) -> int:
    """The latest ``unfreeze_epoch`` a trial of ``cfg`` can have (0: none thaws)."""
    return _latest_thaw(cfg.train, cfg.space, cfg.fixed_in_space)[1]


def _latest_thaw(train: TrainConfig, dims: Mapping[str, Dimension], fixed: Collection[str]) -> tuple[str, int]:
    dim = dims.get("unfreeze_epoch")
    if dim is None:
        return f"{'space' if 'unfreeze_epoch' in fixed else 'train'}.unfreeze_epoch", train.unfreeze_epoch
    if isinstance(dim, Choice):
        return "space.unfreeze_epoch.values", max(dim.values)
    return "space.unfreeze_epoch.high", int(dim.high)


def _check_points(search: SearchConfig, dims: Mapping[str, Dimension]) -> None:
    """Each point of ``search.points_to_evaluate`` names searched keys only, each with a value its dimension can take
    (a freeze key's cut-point names are resolved and checked against the model before the search)."""
    if search.points_to_evaluate and search.algorithm == "grid":
        raise ConfigError("search.points_to_evaluate", list(search.points_to_evaluate),
                          "no points with search.algorithm: grid (the grid runs every combination)")
    for i, point in enumerate(search.points_to_evaluate):
        for key, value in point.items():
            where = f"search.points_to_evaluate[{i}].{key}"
            if key not in dims:
                raise ConfigError(where, value, "a searched key: " + ", ".join(dims), problem="not searched")
            dim = dims[key]
            if isinstance(dim, Choice):
                if value not in dim.values or isinstance(value, bool) != any(isinstance(v, bool) for v in dim.values):
                    raise ConfigError(where, value, "one of the dimension's values: " + ", ".join(map(str, dim.values)))
                continue
            check, allowed = _TRAIN_RULES[key]
            if not check(value):
                raise ConfigError(where, value, allowed, problem=_type_name(value))
            named = any(isinstance(v, str) for v in (value, dim.low, dim.high))  # a freeze key's cut point
            if not named and not dim.low <= value <= dim.high:
                raise ConfigError(where, value, f"a value in [{dim.low}, {dim.high}] (space.{key})",
                                  problem="out of range")


def _check_window(train: TrainConfig, train_raw: Mapping[str, Any], dims: Mapping[str, Dimension],
                  fixed: Collection[str]) -> None:
    """A trained window (train_start / train_stop) stands alone: no freeze key beside it and no thaw (a thaw thaws a
    frozen range from its top; a window's frozen blocks lie on both sides of it). Where both keys of an ordered pair
    are searched, the upper is an int range: the sampler draws it from above the lower
    (tune.settings.space.OptunaSpace)."""
    for lower, upper, _ in ORDERED_PAIRS:
        if lower in dims and upper in dims and not isinstance(dims[upper], IntRange):
            raise ConfigError(f"space.{upper}.type", "choice", f"int where {lower} is searched too (its values are "
                              f"drawn from above the {lower} drawn)")
    window = [k for k in WINDOW if k in dims or train_raw.get(k) is not None]
    if not window:
        return
    where = {k: f"space.{k}" if k in dims or k in fixed else f"train.{k}" for k in (*FREEZE_KEYS, "unfreeze_epoch")}
    for key in ("freeze", *ORDERED):
        given = key in dims or (train_raw.get(key) is not None and not (key == "freeze_start" and
                                                                       train_raw[key] in (0, "none")))
        if given:
            raise ConfigError(where[key], "<searched>" if key in dims else train_raw[key],
                              f"no {key} beside a trained window ({where[window[0]]}): either a freeze "
                              "(freeze, freeze_start/freeze_stop) or a window (train_start/train_stop)")
    if "unfreeze_epoch" in dims or train.unfreeze_epoch:
        raise ConfigError(where["unfreeze_epoch"], "<searched>" if "unfreeze_epoch" in dims else train.unfreeze_epoch,
                          f"0 beside a trained window ({where[window[0]]}): a thaw unfreezes a frozen range from its "
                          "top, and a window's frozen blocks lie on both sides of it")


def _check_thaw(train: TrainConfig, dims: Mapping[str, Dimension], fixed: Collection[str]) -> None:
    """A thaw must come before the last epoch, or it would never happen (epochs fixed; searched epochs are not
    checked). ``fixed``: the train keys given under space:."""
    where, latest = _latest_thaw(train, dims, fixed)
    if "epochs" not in dims and latest >= train.epochs:
        raise ConfigError(where, latest, f"an integer in [0, {train.epochs - 1}] (0: never; a thaw after the last "
                                         f"epoch, train.epochs={train.epochs}, would not happen)")


def _values_of(key: str, train: TrainConfig, dims: Mapping[str, Dimension]) -> list[Any]:
    """The values a train key can take in a trial: its choices, a range's ends, or its fixed value."""
    dim = dims.get(key)
    if dim is None:
        return [getattr(train, key)]
    return list(dim.values) if isinstance(dim, Choice) else [dim.low, dim.high]


def _check_adapter(train: TrainConfig, dims: Mapping[str, Dimension], fixed: Collection[str]) -> None:
    """LoRA's rank is an integer; and where a trial can have adapters, none of its trials thaws or decays: a thaw
    would train the base weights under the adapters, and a decay has no rate for an adapter's block. ``fixed``: the
    train keys given under space:."""
    rank = dims.get("lora_rank")
    if isinstance(rank, FloatRange):
        raise ConfigError("space.lora_rank.type", "float", "int or choice (the rank is an integer)")
    if "lora" not in _values_of("adapter", train, dims):
        return
    for key, off in (("unfreeze_epoch", 0), ("layer_decay", 1)):
        other = [v for v in _values_of(key, train, dims) if v != off]
        if other:
            where = f"space.{key}" if key in dims or key in fixed else f"train.{key}"
            raise ConfigError(where, other[0], f"{off} where a trial can have train.adapter: lora (an adapted range "
                              "stays frozen under its adapters, which train at lr: no thaw, no decay; search those "
                              "with train.adapter: none)")
