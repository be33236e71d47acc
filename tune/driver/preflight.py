"""The pre-flight: a task tried once in the driver, on the CPU, before Ray starts and before any MLflow run.

A few training and validation examples, one forward and backward step of the model, ``evaluate`` on a few
examples: what a trial would meet in its first seconds, met here in a second, each failure one ConfigError naming
the task's field (``task.train_data``, ``task.model``, ``task.loss``, ``task.metric``, ...) with the underlying
message. A task with its own trial (``Task.make_trial``: the yolo task) trains its own way and is not tried here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from tune.errors import ConfigError, one_line
from tune.training import data
from tune.training.probe import batch_targets, classifier_of

__all__ = ["preflight"]

EXAMPLES = 8  # examples per split the pre-flight reads


def preflight(task: Any, block_model: Any, class_labels: bool) -> None:
    """Try ``task`` once on ``block_model`` (built in the driver; its gradients are cleared again). ``class_labels``:
    the targets must be integer classes of the model's classifier (a linear probe is fitted on them, or the task
    scores with ``classification_metrics``). Raises ConfigError on the first problem."""
    classifier = classifier_of(block_model)
    _check_takeaway(task, classifier[1].out_features if classifier is not None else None)
    if task.make_trial is not None:
        return
    train = _first_batch("task.train_data", task.train_data)
    val = _first_batch("task.val_data", task.val_data)
    model = block_model.module.cpu()
    if class_labels:
        classes = classifier[1].out_features if classifier is not None else None
        _check_labels("task.train_data", task.train_data, train, classes)
        _check_labels("task.val_data", task.val_data, val, classes)
    kept = {name: buffer.clone() for name, buffer in model.named_buffers()}  # BatchNorm's statistics, put back
    try:
        _step(task, model, train)
        _check_evaluate(task, model, val)
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(kept[name])


def _check_takeaway(task: Any, outputs: int | None) -> None:
    """What the recommended model is logged with: a class name per output of the classifier, a preprocessing
    that pickles (found out here rather than after the search)."""
    if task.classes is not None:
        if isinstance(task.classes, str) or not all(isinstance(name, str) for name in task.classes):
            raise ConfigError("task.classes", task.classes, "a sequence of class names (strings), in output order")
        if outputs is not None and len(task.classes) != outputs:
            raise ConfigError("task.classes", f"{len(task.classes)} names",
                              f"one name per output of the model's classifier ({outputs})")
    if task.preprocess is not None:
        from tune.predict import pickled

        try:
            pickled(task.preprocess)
        except Exception as err:
            raise ConfigError("task.preprocess", type(task.preprocess).__name__,
                              "a callable that pickles (it is logged with the recommended model)",
                              problem=f"{type(err).__name__}: {one_line(err)}") from None


def _step(task: Any, model: torch.nn.Module, train: Any) -> None:
    """One training step's forward and backward pass (no optimizer step: the weights stay as they are)."""
    model.train()
    try:
        loss = task.step(model, train)
    except Exception as err:
        raise ConfigError("task.model", type(model).__name__, "a model that takes the task's training batches",
                          problem=f"{type(err).__name__}: {one_line(err)}; {_shapes(train)}") from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        shown = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigError("task.loss", shown, "a scalar tensor that depends on the model's trainable parameters",
                          problem=None if not isinstance(loss, torch.Tensor) or loss.requires_grad
                          else "it does not require grad")
    try:
        loss.backward()
    except Exception as err:
        raise ConfigError("task.loss", f"{loss.item():.4g}", "a loss that backpropagates to the model",
                          problem=f"{type(err).__name__}: {one_line(err)}") from None
    finally:
        model.zero_grad(set_to_none=True)
    if not math.isfinite(loss.item()):
        raise ConfigError("task.loss", loss.item(), "a finite loss on a training batch of the pretrained model")


def _first_batch(key: str, split: Any) -> Any:
    """The first few examples of a split as one batch, in the form a trial's loader gives them."""
    if isinstance(split, (tuple, list)) and len(split) == 2 and not data.is_tensor_pair(split):
        kinds = " and ".join(type(part).__name__ for part in split)
        if all(hasattr(part, "__len__") and not isinstance(part, (str, bytes)) for part in split):
            raise ConfigError(key, f"({kinds})", "two torch tensors (inputs, targets), e.g. torch.as_tensor(x), or "
                                                 "a map-style dataset of (input, target) samples")
    if data.is_tensor_pair(split):
        inputs, targets = split
        if len(inputs) != len(targets):
            raise ConfigError(key, f"{len(inputs)} inputs and {len(targets)} targets",
                              "as many targets as inputs")
        if len(inputs) == 0:
            raise ConfigError(key, "no examples", "at least one example")
        return inputs[:EXAMPLES], targets[:EXAMPLES]
    try:
        count = len(split)
    except TypeError:
        raise ConfigError(key, type(split).__name__, "two tensors (inputs, targets) or a map-style dataset "
                                                     "(__len__ and __getitem__)") from None
    if count == 0:
        raise ConfigError(key, "no examples", "at least one example")
    try:
        loader = DataLoader(Subset(split, range(min(EXAMPLES, count))), batch_size=EXAMPLES)
        return next(iter(loader))
    except Exception as err:
        raise ConfigError(key, type(split).__name__, "a dataset whose samples a DataLoader batches",
                          problem=f"{type(err).__name__}: {one_line(err)}") from None


def _check_labels(key: str, split: Any, batch: Any, classes: int | None) -> None:
    """Integer class labels within the classifier's outputs: every label of in-memory tensors, a batch's of a
    dataset."""
    try:
        targets = split[1] if data.is_tensor_pair(split) else batch_targets(batch)
    except (KeyError, IndexError, TypeError):
        return  # a batch shape of the task's own (its training_step and evaluate know it)
    if not isinstance(targets, torch.Tensor):
        return
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise ConfigError(key, f"labels of dtype {targets.dtype}", "integer class labels (torch.long), e.g. "
                                                                  "y.long()")
    if classes is not None and targets.numel() and (targets.min() < 0 or targets.max() >= classes):
        raise ConfigError(key, f"labels {int(targets.min())}..{int(targets.max())}",
                          f"class labels in [0, {classes - 1}] (the model's classifier has {classes} outputs)")


def _check_evaluate(task: Any, model: torch.nn.Module, val: Any) -> None:
    """``evaluate`` on the first validation examples (``val``, as ``_first_batch`` read them) gives the task's
    metric and ``val_loss``, as numbers: as tensors, or as the one batch of a dataset."""
    model.eval()
    try:
        with torch.no_grad():
            if data.is_tensor_pair(task.val_data):
                metrics = task.evaluate(model, *val)
            else:
                metrics = task.evaluate(model, iter([val]))
    except Exception as err:
        raise ConfigError("task.evaluate", getattr(task.evaluate, "__name__", type(task.evaluate).__name__),
                          "a function that scores the model on the validation data",
                          problem=f"{type(err).__name__}: {one_line(err)}") from None
    finally:
        model.train()
    if not isinstance(metrics, Mapping):
        raise ConfigError("task.evaluate", type(metrics).__name__, "a mapping of metric names to numbers")
    names = ", ".join(sorted(map(str, metrics))) or "none"
    if task.metric not in metrics:
        raise ConfigError("task.metric", task.metric, f"a name evaluate returns ({names})")
    if "val_loss" not in metrics:
        raise ConfigError("task.evaluate", f"metrics {names}", "a mapping with the task's metric and val_loss")
    for name in (task.metric, "val_loss"):
        try:
            float(metrics[name])
        except (TypeError, ValueError):
            raise ConfigError("task.evaluate", f"{name}={metrics[name]!r}", "numbers for the metric and val_loss") \
                from None


def _shapes(batch: Any) -> str:
    """A batch's shapes in words, for a model that refused it."""
    def shape(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
        if isinstance(value, Mapping):
            return "{" + ", ".join(f"{k}: {shape(v)}" for k, v in value.items()) + "}"
        return type(value).__name__

    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return f"a training batch of inputs {shape(batch[0])}, targets {shape(batch[1])}"
    return f"a training batch {shape(batch)}"
