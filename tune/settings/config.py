"""A config's sections as frozen dataclasses, and ``build_config``: a space file's content → them, each key under its
rule (tune.settings.fields), the rules across keys checked (tune.settings.consistency), strict keys, one-line errors.
Reading the file itself, with its overrides, is tune.settings.loading's (``load_config``, importable from here too).

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

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tune.errors import ConfigError
from tune.settings.consistency import _check_adapter, _check_points, _check_thaw, _check_window, latest_thaw
from tune.settings.fields import (
    _NAME_RE,
    _REMOVED,
    _REPORT_RULES,
    _SEARCH_RULES,
    _TRAIN_RULES,
    COST_METRICS,
    _Rule,
    _type_name,
    check_report_value,
)
from tune.settings.space import (
    FREEZE_KEYS,
    ORDERED,
    ORDERED_PAIRS,
    Choice,
    Dimension,
    FloatRange,
    parse_dimension,
)

__all__ = ["COST_METRICS", "FREEZE_KEYS", "Config", "ConfigError", "ReportConfig", "SearchConfig", "TaskConfig",
           "TrainConfig", "build_config", "check_report_value", "latest_thaw"]


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


# A space file is read in tune.settings.loading, which builds its config with build_config above: its names are
# importable from here too, taken from there on first use.
_LOADING = ("DEFAULT_SPACE", "bundled_spaces", "experiment_name", "format_override", "load_config", "parse_overrides",
            "read_yaml", "space_file")


def __getattr__(name: str) -> Any:
    if name in _LOADING:
        from tune.settings import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
