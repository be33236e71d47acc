"""The new head's start: a linear probe fitted to convergence on the frozen network's features (LP-FT).

A classifier head initialised for training from scratch makes every frozen configuration of a pretrained network
look worse than it is: with little of the network trainable, little can correct a bad head (Kumar et al., "Fine-
Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022, fit the head first and
fine-tune after). Here the whole pretrained network runs once over the training and validation splits in eval mode
(no augmentation), the inputs of its final ``nn.Linear`` (the classifier the task's new head is) are collected, and
a multinomial logistic regression is fitted on them with full-batch L-BFGS, its L2 strength chosen on the
validation split. Every trial's head then starts from those weights (``train.head_init: probe``), so every freeze
depth starts from the same, fair point: the probe's validation score is the reference each depth should reach.

Pure torch: no Ray, no MLflow. Deterministic for the same weights and data on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune.blocks import BlockModel

__all__ = ["L2_GRID", "Probe", "apply_head_init", "batch_targets", "classifier_of", "fit_probe",
           "forward_only", "head_state",
           "probe_features"]

# L2 strengths tried (on the mean loss of standardised features); the validation split picks one.
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class Probe:
    """A fitted head: ``weight`` (classes x features) and ``bias`` for the classifier named ``classifier``, the L2
    strength the validation split chose, and the validation accuracy of the features alone (``val_accuracy``);
    ``score`` is the task's primary metric of the whole model with this head
    (``tune.training.train.fit_head_probe``)."""

    classifier: str
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    val_accuracy: float
    score: float = float("nan")
    # the rest of the head block as the probe saw it (a layer the model built new before the classifier, e.g.
    # RoBERTa's classifier.dense, DistilBERT's pre_classifier): every trial's head block starts as this one,
    # whatever its seed, so that the probe's features are the trial's
    head: dict[str, torch.Tensor] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """Tensors and plain values only: what travels to trials and loads with ``weights_only=True``."""
        return {"classifier": self.classifier, "weight": self.weight, "bias": self.bias, "l2": self.l2,
                "val_accuracy": self.val_accuracy, "score": self.score, "head": dict(self.head)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Probe:
        return cls(**state)


def classifier_of(block_model: BlockModel) -> tuple[str, nn.Linear] | None:
    """The final ``nn.Linear`` of the model, whose parameters all lie in the last block (the head): the classifier a
    new head replaces. None when the head has no Linear layer (a detector's head)."""
    head = block_model.n_blocks - 1
    found = None
    for name, module in block_model.module.named_modules():
        if isinstance(module, nn.Linear) and all(
                block_model.param_blocks.get(f"{name}.{p}" if name else p) == head
                for p, _ in module.named_parameters()):
            found = (name, module)
    return found


def batch_targets(batch: Any) -> torch.Tensor:
    """A batch's class labels: ``labels`` of a mapping (a tokenized text), else the second of ``(inputs,
    targets)``."""
    if isinstance(batch, Mapping):
        return batch["labels"]
    return batch[1]


def forward_only(model: nn.Module, batch: Any) -> Any:
    """The model on a batch's inputs, no loss: ``model(**inputs)`` for a mapping (its ``labels`` left out, as a
    Hugging Face model's evaluation does), else ``model(inputs)`` of ``(inputs, targets)``."""
    if isinstance(batch, Mapping):
        return model(**{key: value for key, value in batch.items() if key != "labels"})
    return model(batch[0])


@torch.no_grad()
def probe_features(model: nn.Module, classifier: nn.Linear, batches: Iterable[Any]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's inputs and the targets over ``batches``, the model in eval mode (``forward_only``)."""
    captured: list[torch.Tensor] = []
    hook = classifier.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach().float().cpu()))
    targets = []
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward_only(model, batch)
            targets.append(batch_targets(batch).detach().cpu())
    finally:
        hook.remove()
        model.train(was_training)
    features = torch.cat(captured)
    return features.reshape(len(features), -1), torch.cat(targets)


def _fit(features: torch.Tensor, targets: torch.Tensor, classes: int, l2: float, max_iter: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, targets) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], classes: int,
              classifier: str, grid: Iterable[float] = L2_GRID, max_iter: int = 500) -> Probe:
    """Multinomial logistic regression on centred features scaled by one number, one fit per L2 strength in ``grid``;
    the strongest L2 within one standard error of the best validation accuracy wins. The centring and scaling are folded
    into the returned weights, so they apply to the raw features as the classifier sees them."""
    train_x, train_y = train[0].double(), train[1].long()
    val_x, val_y = val[0].double(), val[1].long()
    # one scale for every feature (their mean standard deviation), not one per feature: a feature that barely varies
    # on these data would get a weight of 1/its tiny spread, and the fine-tune's first change to it would explode
    # the logits (seen on EfficientNet-Lite0's pre-logits: folded weight norms near 1,000)
    mean, std = train_x.mean(0), train_x.std(0).mean().clamp_min(1e-12)
    train_z, val_z = (train_x - mean) / std, (val_x - mean) / std
    fits = []
    for l2 in sorted(grid):
        weight, bias = _fit(train_z, train_y, classes, l2, max_iter)
        accuracy = ((val_z @ weight.T + bias).argmax(1) == val_y).double().mean().item()
        fits.append((accuracy, l2, weight, bias))
    # the strongest L2 whose accuracy is within one standard error of the best (the one-standard-error rule): the
    # smallest head that classifies as well as any, so that the fine-tune starts from modest logits (on
    # a separable training set a weak L2 grows the weights without bound, and the first change of the features
    # then makes huge losses)
    top = max(fit[0] for fit in fits)
    error = math.sqrt(top * (1 - top) / len(val_y))
    accuracy, l2, weight, bias = max((fit for fit in fits if fit[0] >= top - error - 1e-12), key=lambda f: f[1])
    raw_weight = weight / std  # w·(x - m)/s + b = (w/s)·x + (b - (w/s)·m)
    raw_bias = bias - raw_weight @ mean
    return Probe(classifier, raw_weight.float(), raw_bias.float(), l2, accuracy)


def apply_head_init(block_model: BlockModel, how: str, probe: Probe | None = None) -> str:
    """Start the classifier as ``how`` says: ``probe`` (``probe``'s weights, bit for bit), ``zero`` (zero weight
    and bias: every class equally likely, a first loss of ln(classes)), ``library`` (as the model was built).
    Returns what was done, for the trial's params: the ``how``, or ``library`` where the model has no classifier."""
    if how == "library":
        return how
    found = classifier_of(block_model)
    if found is None:
        return "library"
    name, linear = found
    with torch.no_grad():
        if how == "zero":
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
            return how
        if probe is None:
            raise ValueError("head_init probe needs a fitted probe")
        if probe.classifier != name or tuple(probe.weight.shape) != tuple(linear.weight.shape):
            raise ValueError(f"the probe was fitted for {probe.classifier} {tuple(probe.weight.shape)}, not "
                             f"{name} {tuple(linear.weight.shape)}")
        parameters = dict(block_model.module.named_parameters())
        for key, value in probe.head.items():
            parameters[key].copy_(value.to(parameters[key]))
        linear.weight.copy_(probe.weight.to(linear.weight))
        if linear.bias is not None:
            linear.bias.copy_(probe.bias.to(linear.bias))
    return how


def head_state(block_model: BlockModel, classifier: str) -> dict[str, torch.Tensor]:
    """The head block's parameters but the classifier's own, copied: what ``Probe.head`` carries to trials."""
    head = block_model.n_blocks - 1
    return {name: p.detach().cpu().clone() for name, p in block_model.module.named_parameters()
            if block_model.param_blocks[name] == head and not name.startswith(f"{classifier}.")}
