"""Beyond hard freezing: how each block of a trial's network trains over the run, its policy. Pure torch.

Hard freezing is one end of a family; a trial's policy is its frozen range (``tune.training.freeze``) and, on top of it:

- ``train.layer_decay`` d in (0, 1] (1: off): layer-wise learning-rate decay. The block at the top of the blocks the
  trial trains (the head) learns at ``lr``, each block below it at ``lr * d ** (the trained blocks above it)``
  (timm's ``param_groups_layer_decay``, AutoGluon's ``lr_decay``). Counted over the blocks the trial trains, so a
  frozen prefix does not shift the scales (timm issue #2691), one optimizer group per block with every parameter
  in exactly one (root-level ones, a ViT's ``cls_token``, with their block: timm issue #2712).
- ``train.unfreeze_epoch`` E (0: never): gradual unfreezing. The frozen range trains frozen for E epochs, then
  thaws (fastai's ``fine_tune(freeze_epochs=E)``; LP-FT when the range is all but the head and the head starts from
  the linear probe). With ``train.unfreeze_every`` k > 0 the range thaws a block at a time from the top, one more
  every k epochs (ULMFiT); a block whose turn comes after the last epoch stays frozen.

``plan`` turns a frozen model and a TrainConfig into a ``Plan``: when each block starts training, its learning-rate
scale and the policy as data (``tune.settings.policy.Policy``), whose label (``[0, 5) thaw@2 decay 0.7``) is the name
a trial goes by in the report and in MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune.settings.policy import Adapter, Policy
from tune.settings.space import LABELLED_KEYS, POLICY_KEYS

__all__ = ["LABELLED_KEYS", "POLICY_KEYS", "Plan", "plan", "trial_policy"]

@dataclass(frozen=True)
class Plan:
    """A trial's policy over its blocks. ``starts[i]``: the epochs done when block i starts training (0: from the
    first; blocks never trained are absent); ``scales[i]``: its learning rate over ``lr``; ``policy``: the policy as
    data, with its label."""

    starts: dict[int, int]
    scales: dict[int, float]
    policy: Policy

    @property
    def label(self) -> str:
        return self.policy.label

    @property
    def thaws(self) -> dict[int, int]:
        """The blocks that start frozen and thaw during the run, with the epochs done at their thaw."""
        return {block: start for block, start in self.starts.items() if start > 0}

    @property
    def first_thaw(self) -> int | None:
        return min(self.thaws.values(), default=None)


def plan(param_counts: list[int], frozen_blocks: tuple[int, ...], cfg: Any, *, window: tuple[int, int] | None = None,
         adapted: bool = False) -> Plan:
    """The policy of a trial whose model has blocks with ``param_counts`` parameters and freezes ``frozen_blocks``
    (from the trained ``window``, if one), as its TrainConfig ``cfg`` says (layer_decay, unfreeze_epoch,
    unfreeze_every, head_lr_mult, epochs; ``adapted``: adapters sit on the frozen blocks). Blocks without parameters
    are left out: nothing of theirs trains. Its Policy names a thaw only where a block thaws and a decay only where
    two blocks or more train: on the head alone a decay changes nothing, and the trial is the hard freeze it labels."""
    frozen = set(frozen_blocks)
    starts = {i: 0 for i, count in enumerate(param_counts) if count and i not in frozen}
    if cfg.unfreeze_epoch:
        thawing = sorted((i for i in frozen if param_counts[i]), reverse=True)  # from the top
        for position, block in enumerate(thawing):
            start = cfg.unfreeze_epoch + position * cfg.unfreeze_every
            if start < cfg.epochs:
                starts[block] = start
    head = len(param_counts) - 1
    trained = sorted(starts)
    scales = {}
    for rank, block in enumerate(trained):
        above = len(trained) - 1 - rank  # the trained blocks above this one
        scales[block] = cfg.layer_decay ** above * (cfg.head_lr_mult if block == head else 1.0)
    starts = dict(sorted(starts.items()))
    found = trial_policy(tuple(frozen_blocks), window, cfg, thaws=any(start > 0 for start in starts.values()),
                         decays=len(trained) > 1, adapted=adapted)
    return Plan(starts=starts, scales=scales, policy=found)


def trial_policy(frozen: tuple[int, ...], window: tuple[int, int] | None, train: Any, *, thaws: bool = True,
                 decays: bool = True, adapted: bool = True) -> Policy:
    """A trial's policy as data: its resolved freeze (the frozen blocks, and the trained window they come from, if
    any) and its TrainConfig ``train`` (layer_decay, unfreeze_epoch, unfreeze_every, adapter, lora_*), with what its
    model makes of them: ``thaws`` (a block thaws during the run), ``decays`` (two blocks or more train),
    ``adapted`` (adapters were put on the frozen blocks). A window that reaches the head is the hard freeze of the
    prefix it freezes, and has no window."""
    thaws = thaws and bool(train.unfreeze_epoch)
    adapter = (Adapter("lora", int(train.lora_rank), float(train.lora_alpha), float(train.lora_dropout))
               if adapted and frozen and getattr(train, "adapter", "none") == "lora" else None)
    prefix = frozen == tuple(range(len(frozen)))
    return Policy(frozen=tuple(frozen), window=None if window is None or prefix else tuple(window),
                  decay=train.layer_decay if decays and train.layer_decay != 1 else 1.0,
                  thaw=train.unfreeze_epoch if thaws else 0, thaw_every=train.unfreeze_every if thaws else 0,
                  adapter=adapter)
