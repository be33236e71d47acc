"""The smoke test's config (``--smoke-test``): a few trials of two epochs (a grid runs once; more epochs where a thaw
comes later: the thaw is what such a space tests), the first trials at the ends and the middle of the freeze depths
searched in place of the space's own search.points_to_evaluate (a sampler's few trials cluster in the middle, and
show no trade-off), two candidates confirmed with two seeds; the user's own overrides still win.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tune.settings.config import Config
from tune.settings.consistency import latest_thaw
from tune.settings.loading import load_config

__all__ = ["SMOKE", "SMOKE_CONFIRM", "depth_points_first", "smoke_overrides", "smoke_points", "smoke_sized"]

SMOKE = (("search.num_samples", 4), ("train.epochs", 2), ("search.grace_period", 1))
SMOKE_CONFIRM = {"confirm_seeds": 2, "confirm_top": 2, "confirm_max_seeds": 2}  # at most, where it confirms at all


def smoke_overrides(space: Path | Mapping[str, Any], given: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """SMOKE as overrides of ``space`` with the user's ``given`` ones: two epochs, or one more than the latest thaw."""
    epochs = max(2, latest_thaw(load_config(space, given)) + 1)  # the space's own values checked
    return tuple((key, epochs if key == "train.epochs" else value) for key, value in SMOKE)


def smoke_points(overrides: Sequence[tuple[str, Any]]) -> bool:
    """Whether the smoke test's own points go first: unless the user's ``overrides`` give the points."""
    return "search.points_to_evaluate" not in dict(overrides)


def smoke_sized(cfg: Config, given: Sequence[tuple[str, Any]], overrides: Sequence[tuple[str, Any]]) -> Config:
    """``cfg`` (loaded with ``smoke_overrides``) as the smoke test runs it: its confirmation at most SMOKE_CONFIRM,
    a grid once and the space's points left out, each unless the user's ``given`` (``overrides`` and flags) or
    ``overrides`` say otherwise."""
    if cfg.report.confirm_seeds:
        named = {key for key, _ in given}
        smaller = {key: min(getattr(cfg.report, key), most) for key, most in SMOKE_CONFIRM.items()
                   if f"report.{key}" not in named}
        cfg = dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, **smaller))
    if cfg.search.algorithm == "grid" and "search.num_samples" not in dict(overrides):
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, num_samples=1))  # the grid once
    if smoke_points(overrides):
        # the space's points are for the whole search: they would fill the smoke test's few trials
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, points_to_evaluate=()))
    return cfg


def depth_points_first(cfg: Config, written: Config) -> tuple[Config, Config]:
    """``cfg`` (checked, names resolved) and ``written`` with the ends and the middle of the searched freeze depths
    as their points to evaluate (``tune.training.space_freezes.depth_points``)."""
    from tune.training import space_freezes

    points = space_freezes.depth_points(cfg.space)  # block indices: what the parent run logs too
    written = dataclasses.replace(written, search=dataclasses.replace(written.search, points_to_evaluate=points))
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, points_to_evaluate=points))
    return cfg, written
