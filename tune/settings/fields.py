"""What each key of ``train:``, ``search:`` and ``report:`` accepts on its own: a rule per key (a check and the
allowed text a ConfigError shows), the experiment name's pattern and the report's cost metrics. The rules across keys
are tune.settings.consistency's; the sections built from these rules are tune.settings.config's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from tune.errors import ConfigError
from tune.settings.space import is_int

__all__ = ["COST_METRICS", "check_report_value"]

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
