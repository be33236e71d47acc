"""What a task gives the search: a model that lists its blocks, data, a loss and a primary metric.

A user task is a function ``make_task(**options) -> Task`` named in the YAML as ``package.module:function``.
Importing it runs its code: name only modules you trust.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune.freeze import BlockModel  # the block vocabulary is the freeze engine's; tasks build it

__all__ = ["BlockModel", "Task", "classification_metrics"]


Metrics = dict[str, float]


@dataclass(frozen=True)
class Task:
    """Everything a trial needs. Data are in-memory tensors: (inputs, targets) for training and validation.

    ``metric`` names the primary metric (higher is better), which trials also report as ``score``.
    ``evaluate(model, inputs, targets)`` returns at least ``metric`` and ``val_loss``. ``augments`` says that
    training inputs change from epoch to epoch (augmentation), which rules out caching a frozen prefix.

    A task that trains with its own loop (the ``yolo`` task trains with Ultralytics' trainer) gives
    ``make_trial(task, train_config, device)`` instead of tensors, a loss and ``evaluate``: it returns a
    ``tune.trial.TrialProtocol`` whose epochs report ``tune.trial.epoch_metrics``. ``extra_metrics`` names the
    metrics its trials report beyond tune.trial.METRIC_KEYS.
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
