"""Freeze-aware GPU shares (``search.freeze_aware_gpus``): a deeper freeze needs less memory, so its trials ask for
a smaller share of a GPU and more of them share one.

In the driver, before the Tuner starts: every freeze the (checked, names resolved) space can sample
(``tune.training.space_freezes.sampled_freezes``) is measured once by its trial's memory after one optimizer step on the
CPU (``tune.training.train.trial_memory``), and its share is ``search.gpus_per_trial`` scaled by that memory against
freezing nothing (``gpu_shares``). ``FreezeAwareResources`` gives Ray each trial's placement from its config: that
share, or the whole ``gpus_per_trial`` for a trial that thaws or trains LoRA adapters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray.tune.execution.placement_groups import PlacementGroupFactory

from tune.settings.config import Config, TrainConfig
from tune.tasks import load_task
from tune.training.space_freezes import sampled_freezes, trial_freeze
from tune.training.train import trial_memory

__all__ = ["FreezeAwareResources", "gpu_shares"]

# The train keys of freezing nothing: the reference every freeze's memory is scaled against.
NOTHING_FROZEN = {"freeze": None, "freeze_start": 0, "freeze_stop": 0, "train_start": None, "train_stop": None}


def gpu_shares(task: Any, cfg: TrainConfig, freezes: Mapping[tuple[int, ...], dict], full_share: float
               ) -> dict[tuple[int, ...], float]:
    """The GPU share of each set of frozen blocks in ``freezes`` (its train keys, ``sampled_freezes``):
    ``full_share`` scaled by its trial's ``trial_memory`` against freezing nothing, rounded up to 0.05."""
    reference = trial_memory(task, cfg, NOTHING_FROZEN)
    return {blocks: min(full_share, max(0.05, math.ceil(20 * full_share * trial_memory(task, cfg, keys) / reference)
                                        / 20))
            for blocks, keys in freezes.items()}


class FreezeAwareResources:
    """Per-trial resources from the trial's config (``ray.tune.with_resources``): its freeze's share of a GPU
    (``gpu_shares``, measured once here), or the full ``search.gpus_per_trial`` for a thaw or LoRA adapters."""

    def __init__(self, cfg: Config) -> None:
        self.cpus, self.full, self.train = cfg.search.cpus_per_trial, cfg.search.gpus_per_trial, cfg.train
        task = load_task(cfg.task)
        self.block_model = task.build_model()
        self.shares = gpu_shares(task, cfg.train, sampled_freezes(cfg.space, cfg.train, self.block_model), self.full)

    def __call__(self, config: dict[str, Any]) -> Any:
        params = config.get("variant", {}).get("params", config)
        if params.get("unfreeze_epoch", self.train.unfreeze_epoch):  # a thaw trains what it froze
            return PlacementGroupFactory([{"CPU": self.cpus, "GPU": self.full}])
        if params.get("adapter", self.train.adapter) == "lora":  # adapters keep the range's activations for backward
            return PlacementGroupFactory([{"CPU": self.cpus, "GPU": self.full}])
        share = self.shares.get(trial_freeze(params, self.train, self.block_model), self.full)
        return PlacementGroupFactory([{"CPU": self.cpus, "GPU": share}])
