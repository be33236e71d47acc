"""What a task gives the search: a model that lists its blocks, data, a loss and a primary metric.

A user task is a function ``make_task(**options) -> Task`` named in the YAML as ``package.module:function``.
Importing it runs its code: name only modules you trust.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlockModel", "Task", "classification_metrics"]


@dataclass(frozen=True)
class BlockModel:
    """A model and its ordered blocks: freezing works on block indices.

    ``blocks`` are submodules of ``module`` in forward order. ``cut_points`` names block counts that mean
    something for this model, e.g. ``{"backbone": 6}``: freezing ``backbone`` freezes blocks [0, 6).
    ``none`` (0) and ``all_but_head`` (len(blocks) - 1) are always defined. ``example_input`` is one small
    batch, used to measure each block's share of forward FLOPs. ``sequential`` says that the forward pass is
    exactly the blocks applied in order (each block's output is the next one's input): only then can a frozen
    prefix's outputs be cached and the rest trained on them.
    """

    module: nn.Module
    blocks: Sequence[nn.Module]
    block_names: Sequence[str]
    cut_points: Mapping[str, int]
    example_input: torch.Tensor
    sequential: bool = False

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.block_names):
            raise ValueError(f"{len(self.blocks)} blocks but {len(self.block_names)} block names")
        if len(self.blocks) < 2:
            raise ValueError("a model needs at least two blocks (one to freeze, one to train)")

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def named_cut_points(self) -> dict[str, int]:
        return {"none": 0, **self.cut_points, "all_but_head": self.n_blocks - 1}


Metrics = dict[str, float]


@dataclass(frozen=True)
class Task:
    """Everything a trial needs. Data are in-memory tensors: (inputs, targets) for training and validation.

    ``metric`` names the primary metric (higher is better), which trials also report as ``score``.
    ``evaluate(model, inputs, targets)`` returns at least ``metric`` and ``val_loss``. ``augments`` says that
    training inputs change from epoch to epoch (augmentation), which rules out caching a frozen prefix.

    A task that trains with its own loop (the ``yolo`` task trains with Ultralytics' trainer) gives
    ``make_trial(task, train_config, device)`` instead of tensors, a loss and ``evaluate``: it returns an object
    with ``run(on_epoch)``, ``state_dict()``, ``load_state_dict()``, ``epoch`` and ``device`` (see
    tune.train.Trial). ``extra_metrics`` names the metrics its trials report beyond tune.train.METRIC_KEYS.
    """

    name: str
    build_model: Callable[[], BlockModel]
    metric: str
    train_data: tuple[torch.Tensor, torch.Tensor] | None = None
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    evaluate: Callable[[nn.Module, torch.Tensor, torch.Tensor], Metrics] | None = None
    augments: bool = False
    make_trial: Callable[..., Any] | None = None
    extra_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = [name for name in ("train_data", "val_data", "loss", "evaluate") if getattr(self, name) is None]
        if self.make_trial is None and missing:
            raise ValueError(f"task {self.name!r} has no make_trial and no {', '.join(missing)}")


@torch.no_grad()
def classification_metrics(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                           batch_size: int = 1024) -> Metrics:
    """``val_accuracy`` and ``val_loss`` (mean cross-entropy) of a classifier, in eval mode."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(inputs), batch_size):
        logits = model(inputs[start:start + batch_size])
        target = targets[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
    return {"val_accuracy": correct / len(inputs), "val_loss": loss_sum / len(inputs)}
