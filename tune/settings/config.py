"""A search space file → frozen dataclasses, with strict keys and one-line errors.

File layout (every section optional but ``name``)::

    name: digits_freeze            # the MLflow experiment
    task: {name: digits, options: {labels_per_class: 20}}
    train: {epochs: 10, batch_size: 32, lr: 1.0e-3, ...}      # TrainConfig: one trial's fixed values
    space: {freeze_stop: {type: int, low: none, high: all_but_head}, lr: {...}}  # searched (space.py)
    search: {num_samples: 24, scheduler: asha, ...}           # SearchConfig: how Ray Tune searches
    report: {tolerance: 0.01, cost: epoch_time_s}             # ReportConfig: the recommendation rule

A plain value under ``space:`` fixes that training parameter (so ``--set space.lr=0.003`` pins lr).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tune.errors import ConfigError, one_line
from tune.settings.space import (
    FREEZE_KEYS,
    ORDERED,
    ORDERED_PAIRS,
    WINDOW,
    Choice,
    Dimension,
    FloatRange,
    IntRange,
    is_int,
    parse_dimension,
)

__all__ = ["COST_METRICS", "FREEZE_KEYS", "Config", "ConfigError", "ReportConfig", "SearchConfig", "TaskConfig",
           "TrainConfig", "bundled_spaces", "latest_thaw", "load_config", "parse_overrides", "space_file"]


@dataclass(frozen=True)
class TaskConfig:
    name: str = "digits"  # a built-in task or an import path "package.module:function"
    options: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of the task's factory
    # A task given as a Python object (tune.FreezeSearch(task=...)): a function returning a Task, called with the
    # options, in the driver and in every trial (Ray pickles it); ``name`` then only names it in MLflow.
    factory: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial needs; the searched keys are replaced per trial."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | linear: to 0 at the last step (after any warmup)
    warmup: float = 0.0  # the share of all steps over which the learning rate rises linearly from 0
    freeze: int | str | tuple[int, ...] | None = None  # N = blocks [0, N); a list of blocks; a cut-point name
    freeze_start: int | str = 0  # with freeze_stop: blocks [freeze_start, freeze_stop)
    freeze_stop: int | str | None = None
    # a trained window instead of a freeze: blocks [train_start, train_stop) and the head train, the rest is frozen
    train_start: int | str | None = None  # None: 0 where train_stop is given
    train_stop: int | str | None = None  # None: the head where train_start is given
    frozen_bn: str = "eval"  # eval: frozen BatchNorm keeps its statistics; train: they drift (YOLOv5's train.py)
    frozen_dropout: str = "eval"  # eval: no dropout / stochastic depth in frozen blocks; train: as model.train()
    head_init: str = "probe"  # the classifier's start: probe (a linear probe fitted on the frozen features) | zero
    # | library (as the model builds it: a from-scratch init)
    head_lr_mult: float = 1.0  # the head block's learning rate is lr times this (discriminative learning rates)
    # beyond hard freezing (tune.training.policy): each trained block at lr * layer_decay ** (trained blocks above it);
    # the frozen range thaws after unfreeze_epoch epochs (0: never), a block at a time every unfreeze_every epochs (0:
    # at once)
    layer_decay: float = 1.0
    unfreeze_epoch: int = 0
    unfreeze_every: int = 0
    # LoRA (tune.training.adapter): none | lora: the frozen range's Linear and Conv2d modules get low-rank adapters that
    # train (rank lora_rank, scale lora_alpha / lora_rank, dropout lora_dropout on their inputs), their base weights
    # frozen
    adapter: str = "none"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    prefix_cache: str = "auto"  # auto: compute a frozen prefix's outputs once when that is exact; off: never
    prefix_cache_max_mb: float = 4096.0  # no cache where the cached outputs would take more memory than this
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Lightning's words: 32 | bf16-mixed | 16-mixed (autocast; 16-mixed with a GradScaler, CUDA only) | auto:
    # bf16-mixed on a CUDA device that supports it, 16-mixed on one that does not, 32 on the CPU
    # (tune.training.precision)
    precision: str = "auto"
    channels_last: bool | str = "auto"  # auto: on for a model with 2-d convolutions on CUDA; true | false


@dataclass(frozen=True)
class SearchConfig:
    num_samples: int = 16  # trials (optuna); with algorithm grid, how many times the whole grid runs (default 1)
    algorithm: str = "optuna"  # optuna: TPE samples the space | grid: every combination of the choices, once each
    scheduler: str = "auto"  # auto (asha for one objective, fifo for several) | asha | fifo
    grace_period: int = 2  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2  # ASHA: keep the top 1/reduction_factor at each rung
    # ASHA: whom a trial is compared with at a rung: per_freeze_range (trials of its own freeze range: ASHA tunes the
    # nuisance parameters within each depth, and no depth is stopped for a learning curve that dips before it climbs)
    # | shared (every trial: Ray Tune's own ASHA)
    asha_rungs: str = "per_freeze_range"
    max_concurrent_trials: int = 0  # 0: as many as the CPUs / GPUs allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    freeze_aware_gpus: bool = False  # scale each trial's GPU share by its freeze depth's measured memory
    seed: int = 0  # the Optuna sampler's seed
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) pairs beside score: a multi-objective search
    time_budget_s: float | None = None  # stop the search cleanly after this many seconds
    # configurations tried first, in order (Ray's OptunaSearch points_to_evaluate, Optuna's enqueue_trial); a point
    # may fix only some searched keys, the sampler draws the rest (a hard freeze: {layer_decay: 1, unfreeze_epoch: 0})
    points_to_evaluate: tuple[Mapping[str, Any], ...] = ()

    @property
    def objective_list(self) -> list[tuple[str, str]]:
        """What the search optimises: score (max), the task's primary metric, unless objectives say more."""
        return list(self.objectives) or [("score", "max")]

    @property
    def scheduler_name(self) -> str:
        if self.scheduler != "auto":
            return self.scheduler
        return "fifo" if len(self.objective_list) > 1 or self.algorithm == "grid" else "asha"


@dataclass(frozen=True)
class ReportConfig:
    """The recommendation rule: among the candidates scoring within ``tolerance`` of the best (in score units),
    the one with the lowest ``cost``. ``confirm_top`` candidates (the best score's freeze range and the cheapest
    ranges that came near it) are re-run on the same fresh seeds, no early stopping, in a race
    (``tune.reporting.race``): ``confirm_seeds`` seeds each first (0: no confirmation, the search's single trials
    decide), then one more a round, up to ``confirm_max_seeds`` (at least ``confirm_seeds``), where the race decides
    once: a candidate is proven within the tolerance when its one-sided bounds against every other candidate, on the
    per-seed differences at ``1 - (1 - confidence) / (confirm_top - 1)``, are within it. The race stops earlier where no
    candidate can be proven by then."""

    tolerance: float = 0.01
    cost: str = "epoch_time_s"  # epoch_time_s (mean per epoch) | train_time_s (to the best epoch) | peak_mem_mb
    confirm_seeds: int = 3
    confirm_top: int = 2
    confirm_max_seeds: int = 5
    confidence: float = 0.95

    @property
    def seed_budget(self) -> int:
        """Seeds per candidate at most: ``confirm_max_seeds``, or ``confirm_seeds`` where that is more."""
        return max(self.confirm_seeds, self.confirm_max_seeds)


@dataclass(frozen=True)
class Config:
    name: str
    task: TaskConfig
    train: TrainConfig
    space: Mapping[str, Dimension]
    search: SearchConfig
    report: ReportConfig = field(default_factory=ReportConfig)
    fixed_in_space: frozenset[str] = frozenset()  # train keys given a fixed value under space: (in ``train``)
    train_written: frozenset[str] = frozenset()  # train keys the file or an override wrote (train: or space:)

    def train_key(self, key: str) -> str:
        """Where the user gave the training parameter ``key``: ``space.key`` for a fixed value under space:, else
        ``train.key``; what a ConfigError about its value names."""
        return f"space.{key}" if key in self.fixed_in_space else f"train.{key}"

    def as_dict(self) -> dict[str, Any]:
        """A plain, YAML-safe view (for logging and for the parent run's params)."""
        space = {key: {"type": type(dim).__name__, **dataclasses.asdict(dim)} for key, dim in self.space.items()}
        return {"name": self.name, "task": {"name": self.task.name, "options": dict(self.task.options)},
                "train": dataclasses.asdict(self.train), "space": space, "search": dataclasses.asdict(self.search),
                "report": dataclasses.asdict(self.report)}


_SECTIONS = {"name", "task", "train", "space", "search", "report"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")

# What each field accepts, as (check, allowed text). Types are checked strictly: a bool is not an int,
# and an int is accepted where a float is wanted.
_Rule = tuple[Any, str]


def _int_at_least(low: int) -> _Rule:
    return (lambda v: is_int(v) and v >= low, f"an integer >= {low}")


def _float_at_least(low: float, strict: bool = False) -> _Rule:
    def check(v: Any) -> bool:
        ok_type = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return ok_type and (v > low if strict else v >= low)

    return (check, f"a number {'>' if strict else '>='} {low:g}")


def _one_of(*options: str) -> _Rule:
    return (lambda v: v in options, "one of " + ", ".join(options))


def _freeze_value(v: Any) -> bool:
    if v is None or isinstance(v, str):
        return True
    if isinstance(v, (list, tuple)):
        return all(is_int(i) for i in v)
    return is_int(v)


_FREEZE_ALLOWED = "an integer block count, a list of block indices, or a cut-point name (none, backbone, ...)"

_TRAIN_RULES: dict[str, _Rule] = {
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "optimizer": _one_of("adam", "adamw", "sgd"),
    "lr": _float_at_least(0.0, strict=True),
    "momentum": _float_at_least(0.0),
    "weight_decay": _float_at_least(0.0),
    "lr_schedule": _one_of("constant", "linear"),
    "warmup": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
               "a share of the steps in [0, 1)"),
    "freeze": (_freeze_value, _FREEZE_ALLOWED),
    "freeze_start": (lambda v: _freeze_value(v) and v is not None and not isinstance(v, (list, tuple)),
                     "a block index or a cut-point name"),
    "freeze_stop": (lambda v: _freeze_value(v) and not isinstance(v, (list, tuple)),
                    "a block index, a cut-point name, or null"),
    "train_start": (lambda v: _freeze_value(v) and not isinstance(v, (list, tuple)),
                    "a block index, a cut-point name, or null"),
    "train_stop": (lambda v: _freeze_value(v) and not isinstance(v, (list, tuple)),
                   "a block index, a cut-point name, or null"),
    "frozen_bn": _one_of("eval", "train"),
    "frozen_dropout": _one_of("eval", "train"),
    "head_init": _one_of("probe", "zero", "library"),
    "head_lr_mult": _float_at_least(0.0, strict=True),
    "layer_decay": (lambda v: type(v) in (int, float) and 0 < v <= 1, "a number in (0, 1] (1: no decay)"),
    "unfreeze_epoch": (_int_at_least(0)[0], "an integer >= 0: the epochs the freeze lasts (0: it never thaws)"),
    "unfreeze_every": (_int_at_least(0)[0], "an integer >= 0: epochs between one block's thaw and the next "
                                            "(0: the range thaws at once)"),
    "adapter": _one_of("none", "lora"),
    "lora_rank": (_int_at_least(1)[0], "an integer >= 1 (the adapters' rank)"),
    "lora_alpha": (_float_at_least(0.0, strict=True)[0], "a number > 0 (the adapters' scale is "
                                                                          "lora_alpha / lora_rank)"),
    "lora_dropout": (lambda v: type(v) in (int, float) and 0 <= v < 1, "a number in [0, 1) (dropout on the adapters' "
                                                                       "inputs)"),
    "prefix_cache": _one_of("auto", "off"),
    "prefix_cache_max_mb": _float_at_least(0.0),
    "seed": _int_at_least(0),
    "device": (lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
               "auto, cpu, cuda or cuda:N"),
    "precision": (lambda v: (v in ("auto", "32", "bf16-mixed", "16-mixed") or v == 32) and not isinstance(v, bool),
                  "one of auto, 32, bf16-mixed, 16-mixed"),
    "channels_last": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
}

_SEARCH_RULES: dict[str, _Rule] = {
    "num_samples": _int_at_least(1),
    "algorithm": _one_of("optuna", "grid"),
    "scheduler": _one_of("auto", "asha", "fifo"),
    "grace_period": _int_at_least(1),
    "reduction_factor": _int_at_least(2),
    "asha_rungs": _one_of("per_freeze_range", "shared"),
    "max_concurrent_trials": _int_at_least(0),
    "cpus_per_trial": _float_at_least(0.0, strict=True),
    "gpus_per_trial": _float_at_least(0.0),
    "freeze_aware_gpus": (lambda v: isinstance(v, bool), "true or false"),
    "seed": _int_at_least(0),
    "objectives": (lambda v: isinstance(v, Mapping) and len(v) >= 1 and all(
        isinstance(k, str) and m in ("max", "min") for k, m in v.items()),
        "a mapping of metric names to max or min, e.g. {score: max, epoch_time_s: min}"),
    "time_budget_s": (lambda v: v is None or (_float_at_least(0.0, strict=True)[0](v)), "a number of seconds > 0"),
    "points_to_evaluate": (lambda v: isinstance(v, list) and all(isinstance(p, Mapping) and p for p in v),
                           "a list of mappings of searched keys to values, e.g. [{layer_decay: 1, unfreeze_epoch: 0}]"),
}

COST_METRICS = ("epoch_time_s", "train_time_s", "peak_mem_mb")

_REPORT_RULES: dict[str, _Rule] = {
    "tolerance": _float_at_least(0.0),
    "cost": _one_of(*COST_METRICS),
    "confirm_seeds": (lambda v: type(v) is int and (v == 0 or v >= 2),
                      "0 (no confirmation) or an integer >= 2 (seeds per candidate)"),
    "confirm_top": _int_at_least(1),
    "confirm_max_seeds": _int_at_least(2),
    "confidence": (lambda v: type(v) in (int, float) and 0.5 <= v < 1, "a number in [0.5, 1), e.g. 0.95"),
}


def check_report_value(key: str, value: Any, name: str) -> None:
    """A value for ``report.<key>`` given another way (a flag, an argument: ``name``), under the section's own
    rule."""
    check, allowed = _REPORT_RULES[key]
    if not check(value):
        raise ConfigError(name, value, allowed, problem=None if type(value) is int else _type_name(value))


# Keys that older space files may hold, and why they are gone.
_REMOVED = {f"search.{key}": "no longer a key: the search optimises score, the task's primary metric; other "
                             "metrics go beside it in search.objectives" for key in ("metric", "mode")}


def _type_name(v: Any) -> str:
    return type(v).__name__


def _check_fields(section: str, raw: Any, cls: type, rules: Mapping[str, _Rule]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(section, raw, f"a mapping of {', '.join(rules)}")
    values = {}
    for key, value in raw.items():
        if key not in rules:
            problem = _REMOVED.get(f"{section}.{key}", "unknown key")
            raise ConfigError(f"{section}.{key}", value, f"keys {', '.join(rules)}", problem=problem)
        check, allowed = rules[key]
        if not check(value):
            raise ConfigError(f"{section}.{key}", value, allowed, problem=_type_name(value))
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, Mapping):
            value = tuple(value.items())
        values[key] = value
    return cls(**values)


def _parse_space(raw: Any) -> tuple[dict[str, Dimension], dict[str, Any]]:
    """Split ``space:`` into searched dimensions and fixed values."""
    if raw is None:
        return {}, {}
    if not isinstance(raw, Mapping):
        raise ConfigError("space", raw, "a mapping of training parameters to distributions")
    dims, fixed = {}, {}
    for key, value in raw.items():
        if key not in _TRAIN_RULES or key == "device":
            searchable = ", ".join(k for k in _TRAIN_RULES if k != "device")
            raise ConfigError(f"space.{key}", value, f"a training parameter: {searchable}", problem="unknown key")
        if isinstance(value, Mapping):
            dims[key] = parse_dimension(f"space.{key}", value, names_allowed=key in FREEZE_KEYS)
            _check_dimension_values(key, dims[key])
        else:  # a fixed value: checked here, where the user wrote it, before it joins train:
            check, allowed = _TRAIN_RULES[key]
            if not check(value):
                raise ConfigError(f"space.{key}", value, allowed, problem=_type_name(value))
            fixed[key] = value
    return dims, fixed


def _check_dimension_values(key: str, dim: Dimension) -> None:
    """Every value a dimension can take must be a valid value of its training parameter."""
    check, allowed = _TRAIN_RULES[key]
    if isinstance(dim, Choice):
        named = [(f"space.{key}.values[{i}]", v) for i, v in enumerate(dim.values)]
    else:
        named = [(f"space.{key}.low", dim.low), (f"space.{key}.high", dim.high)]
        if isinstance(dim, FloatRange) and key in ("epochs", "batch_size", "seed", "unfreeze_epoch",
                                                   "unfreeze_every"):
            raise ConfigError(f"space.{key}.type", "float", "int or choice (this parameter is an integer)")
    for where, value in named:
        if not check(value):
            raise ConfigError(where, value, allowed, problem=_type_name(value))


def build_config(raw: Any) -> Config:
    if not isinstance(raw, Mapping):
        raise ConfigError("<file>", raw, "a YAML mapping with keys " + ", ".join(sorted(_SECTIONS)))
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(str(key), raw[key], "sections " + ", ".join(sorted(_SECTIONS)), problem="unknown key")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError("name", name, "letters, digits, '_', '-', '.' (it names the MLflow experiment)")

    task_raw = raw.get("task") or {}
    if isinstance(task_raw, str):
        task_raw = {"name": task_raw}
    if not isinstance(task_raw, Mapping):
        raise ConfigError("task", task_raw, "a task name or a mapping with name and options")
    for key in task_raw:
        if key not in ("name", "options"):
            raise ConfigError(f"task.{key}", task_raw[key], "keys name, options", problem="unknown key")
    task_name = task_raw.get("name", TaskConfig.name)
    if not isinstance(task_name, str) or not task_name:
        raise ConfigError("task.name", task_name, "a built-in task name or package.module:function")
    options = task_raw.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError("task.options", options, "a mapping of the task factory's keyword arguments")
    task = TaskConfig(task_name, dict(options))

    dims, fixed = _parse_space(raw.get("space"))
    train_raw = raw.get("train") or {}
    if not isinstance(train_raw, Mapping):
        raise ConfigError("train", train_raw, "a mapping of " + ", ".join(_TRAIN_RULES))
    train_raw = {**train_raw, **fixed}
    train = _check_fields("train", train_raw, TrainConfig, _TRAIN_RULES)
    if train.precision == 32:  # YAML reads `precision: 32` as a number
        train = dataclasses.replace(train, precision="32")
    given = {k for k in FREEZE_KEYS if train_raw.get(k) is not None} | (dims.keys() & set(FREEZE_KEYS))
    if "freeze" in given and given & set(ORDERED):
        where = "space.freeze" if "freeze" in dims or "freeze" in fixed else "train.freeze"
        raise ConfigError(where, train_raw.get("freeze", "<searched>"),
                          "either freeze or freeze_start/freeze_stop, not both (in train: and space: together)")
    _check_window(train, train_raw, dims, fixed)
    _check_thaw(train, dims, fixed)
    _check_adapter(train, dims, fixed)
    search = _check_fields("search", raw.get("search"), SearchConfig, _SEARCH_RULES)
    if search.algorithm == "grid" and "num_samples" not in (raw.get("search") or {}):
        search = dataclasses.replace(search, num_samples=1)  # a grid runs each combination once unless told
    report = _check_fields("report", raw.get("report"), ReportConfig, _REPORT_RULES)
    if len(search.objective_list) == 1 and search.objective_list[0] != ("score", "max"):
        raise ConfigError("search.objectives", dict(search.objectives), "score with mode max: the report and the "
                          "recommendation rank trials by score, the task's primary metric; search other metrics "
                          "beside it, e.g. {score: max, peak_mem_mb: min}")
    if search.freeze_aware_gpus and search.gpus_per_trial <= 0:
        raise ConfigError("search.freeze_aware_gpus", True, "false, or true with search.gpus_per_trial > 0")
    if search.scheduler == "asha" and len(search.objective_list) > 1:
        raise ConfigError("search.scheduler", "asha", "fifo or auto with several objectives (ASHA ranks trials "
                                                       "by one metric and would bias the frontier)")
    if search.scheduler_name == "asha" and search.grace_period > train.epochs:
        raise ConfigError("search.grace_period", search.grace_period, f"an integer <= train.epochs ({train.epochs})")
    if not dims:
        raise ConfigError("space", raw.get("space"), "at least one searched parameter, e.g. freeze_stop")
    _check_points(search, dims)
    if search.algorithm == "grid":
        for key, dim in dims.items():
            if isinstance(dim, FloatRange):
                raise ConfigError(f"space.{key}.type", "float", "choice or int with search.algorithm: grid "
                                                                "(a grid needs a finite set of values)")
        for lower, upper, _ in ORDERED_PAIRS:
            if {lower, upper} <= dims.keys():
                raise ConfigError(f"space.{lower}", "<searched>", f"a fixed {lower} with search.algorithm: "
                                  f"grid (the grid would pair a {lower} after a {upper})")
    return Config(name=name, task=task, train=train, space=dims, search=search, report=report,
                  fixed_in_space=frozenset(fixed), train_written=frozenset(train_raw))


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


def experiment_name(text: str, fallback: str) -> str:
    """``text`` as an experiment's name (a task's name such as 'my task'): each character a name may not hold made
    '_', ``fallback`` where that is still no name."""
    named = re.sub(r"[^A-Za-z0-9_.\-]", "_", text)
    return named if _NAME_RE.match(named) else fallback


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``section.key=value`` strings → (dotted key, YAML-parsed value)."""
    parsed = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", item, "section.key=value, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as err:
            problem = one_line(err, limit=None)
            raise ConfigError(f"--set {key}", text, "a YAML scalar, list or mapping", problem=problem) from None
        parsed.append((key, value))
    return parsed


def _plain(value: Any) -> Any:
    """A value as YAML writes it: numpy scalars as Python's, paths as strings, tuples as lists."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def format_override(key: str, value: Any) -> str:
    """(dotted key, value) → ``key=value`` that ``parse_overrides`` reads back as the same value (flow YAML);
    ConfigError naming ``overrides.<key>`` for a value no command line can carry."""
    def written(item: Any) -> str:
        return yaml.safe_dump(item, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").strip()

    try:
        text = written(_plain(value))
        [(_, back)] = parse_overrides([f"{key}={text}"])
    except (yaml.YAMLError, ConfigError) as err:
        raise ConfigError(f"overrides.{key}", value, "a value YAML writes (numbers, strings, bools, null, lists, "
                                                     "mappings)", problem=one_line(err)) from None
    if written(back) != text:  # compared as written: nan is nan
        raise ConfigError(f"overrides.{key}", value, "a value a command line carries unchanged",
                          problem=f"it reads back as {back!r}")
    return f"{key}={text}"


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}", value, f"a key inside a mapping ({part} is {child!r})")
        node = child
    node[parts[-1]] = value


DEFAULT_SPACE = "digits_freeze"  # the embedded default: what a search without a space runs


def bundled_spaces() -> dict[str, Path]:
    """The search spaces that come with the project, by name (``digits_freeze``: search_spaces/digits_freeze.yaml):
    the checkout's search_spaces/ folder, or the installed package's copy of it (tune/search_spaces in the wheel)."""
    here = Path(__file__).resolve().parents[1]  # tune/
    folder = next((f for f in (here.parent / "search_spaces", here / "search_spaces") if f.is_dir()), None)
    return {} if folder is None else {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def space_file(space: str | Path) -> Path:
    """A space file's path: ``space`` itself where that is a file, else the bundled space of that name (with or
    without ``.yaml``); unchanged where neither (load_config then says what is wrong)."""
    path = Path(space)
    if path.is_file() or path.parent != Path("."):
        return path
    return bundled_spaces().get(path.name.removesuffix(".yaml"), path)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(f"{key!r} repeated on line {line}; YAML would keep only the last")
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping (PyYAML keeps the last silently: a space file with
    two ``space:`` sections would search only the second)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """A space file's YAML, loaded safely, with a repeated key refused (yaml.YAMLError)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def load_config(path: str | Path | Mapping[str, Any], overrides: Sequence[tuple[str, Any]] = ()) -> Config:
    """Read a search-space YAML file (safely), apply ``--set`` overrides, check it all. ``path`` may also name a
    bundled space (``digits_freeze``) or be the file's content as a mapping (a config built in Python)."""
    if isinstance(path, Mapping):
        raw = copy.deepcopy(dict(path))
        for dotted, value in overrides:
            _apply_override(raw, dotted, value)
        return build_config(raw)
    path = space_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("--space", str(path), "an existing YAML file or a bundled space ("
                          + ", ".join(bundled_spaces()) + ")", problem="no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ConfigError("--space", str(path), "a readable UTF-8 YAML file", problem=type(err).__name__) from None
    try:
        raw = read_yaml(text)
    except _DuplicateKey as err:
        raise ConfigError(str(path), err.key, "each key once in a mapping", problem=str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), "<file>", "valid YAML", problem=one_line(err, limit=None)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), raw, "a YAML mapping with keys " + ", ".join(sorted(_SECTIONS)))
    for dotted, value in overrides:
        _apply_override(raw, dotted, value)
    return build_config(raw)
