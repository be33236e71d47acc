"""What a search's runs hold, as plain Python: the records the report reads (TrialRecord, SearchRecord), the
encodings the runs are written with (``flatten`` for params, ``search_tags`` for what SearchRecord decodes), a
param read back (``typed``, ``typed_params``) and shown (``short``); a trial's policy from its params
(``TrialRecord.policy``). Imports neither MLflow nor Ray
(tune.tracker.tracking fills the records from MLflow).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tune.settings.config import ReportConfig, SearchConfig
from tune.settings.policy import Policy

__all__ = ["LABELS", "SearchRecord", "TrialRecord", "flatten", "search_tags", "short", "typed", "typed_params"]


@dataclass
class TrialRecord:
    """One child run as the report sees it."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # each metric's latest value

    @property
    def frozen_range(self) -> tuple[int, int]:
        """(start, stop) of the blocks the trial froze, as its FreezeSummary logged them (a set of blocks {i, j}:
        (i, j + 1)); the params' where a run holds no such metric; (0, 0) where neither says."""
        for source in (self.metrics, self.params):
            if "freeze_stop" in source:
                try:
                    return int(float(source.get("freeze_start", 0))), int(float(source["freeze_stop"]))
                except (TypeError, ValueError):  # a param such as None: not a range
                    continue
        return (0, 0)

    @property
    def policy(self) -> Policy:
        """The trial's policy, from the params its run logged (``Policy.params``); a run without them gets the hard
        freeze of its ``frozen_range`` with what its config params ask for (``Policy.from_params``)."""
        start, stop = self.frozen_range
        return Policy.from_params(typed_params(self.params), frozen=tuple(range(start, stop)))


@dataclass(frozen=True)
class SearchRecord:
    """A search's parent run as MLflow holds it, decoded: its config's report rule, what it searched, its data."""

    run_id: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    split_sizes: dict[str, int] = field(default_factory=dict)  # examples by split (train, val, test), where logged

    @property
    def val_size(self) -> int | None:
        """The validation split's examples (None: not logged)."""
        return self.split_sizes.get("val")

    @property
    def name(self) -> str:
        return self.params.get("name", "")

    @property
    def searched(self) -> list[str]:
        return json.loads(self.tags.get("freeze_search.searched", "[]"))

    @property
    def objectives(self) -> list[tuple[str, str]]:
        default = json.dumps(SearchConfig().objective_list)
        return [tuple(pair) for pair in json.loads(self.tags.get("freeze_search.objectives", default))]

    @property
    def report(self) -> ReportConfig:
        default = ReportConfig()
        return ReportConfig(tolerance=float(self.params.get("report.tolerance", default.tolerance)),
                            cost=self.params.get("report.cost", default.cost),
                            confirm_seeds=int(self.params.get("report.confirm_seeds", default.confirm_seeds)),
                            confirm_max_seeds=int(self.params.get("report.confirm_max_seeds",
                                                                  default.confirm_max_seeds)),
                            confidence=float(self.params.get("report.confidence", default.confidence)))

    @property
    def experiment_path(self) -> str:
        """The Ray experiment folder (or URI) that ``--resume`` restores."""
        return self.tags.get("ray.experiment_path", "")


def search_tags(searched: Iterable[str], objectives: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The parent run's tags that ``SearchRecord`` reads back: what was searched and optimised."""
    return {"freeze_search.searched": json.dumps(list(searched)),
            "freeze_search.objectives": json.dumps([list(pair) for pair in objectives])}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``section.key`` strings, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def typed(text: str) -> Any:
    """A param as MLflow stored it (``str(value)``, as ``flatten`` and the trials write them) → its value: a Python
    literal read back (numbers, True, None, lists), a number Python spells otherwise ('inf') as a float, anything else
    the string itself ('off' and '{0, 2}' stay strings, where YAML would read a bool and a mapping)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return float(text)
    except ValueError:
        return text


LABELS = ("freeze_range", "policy")  # params that name what a trial froze: strings, whatever they look like


def typed_params(params: Mapping[str, str]) -> dict[str, Any]:
    """A run's params, each ``typed`` but the labels (``LABELS``)."""
    return {key: text if key in LABELS else typed(text) for key, text in params.items()}


def short(value: Any) -> str:
    """A param for a table or a console line: numbers (or numeric strings, as MLflow keeps params) to 3 digits."""
    if isinstance(value, bool):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.3g}" if not number.is_integer() else str(int(number))

