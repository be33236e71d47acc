"""What a task gives the search: a model that lists its blocks, data, a loss and a primary metric.

A user task is a function ``make_task(**options) -> Task`` named in the YAML as ``package.module:function``.
Importing it runs its code: name only modules you trust.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from tune.errors import ConfigError

if TYPE_CHECKING:  # a task builds one: from tune.blocks import BlockModel
    from tune.blocks import BlockModel

__all__ = ["Task", "check_option", "classification_metrics", "takes_paths"]


Metrics = dict[str, float]
_Factory = TypeVar("_Factory", bound=Callable[..., Any])


@dataclass(frozen=True)
class Task:
    """Everything a trial needs: a model that lists its blocks, data, how to train a step and how to score.

    ``train_data`` / ``val_data``: two in-memory tensors ``(inputs, targets)``, or map-style datasets whose
    samples are ``(input, target)`` (or whatever ``training_step`` and ``evaluate`` take); ``tune.training.data`` turns
    them into batches whose order and randomness depend on (seed, epoch) only. ``num_workers`` loader processes
    read a dataset (0: the trial's own process).

    ``training_step(model, batch)`` returns the batch's loss; by default ``loss(model(inputs), targets)``.
    ``evaluate`` scores the model: on tensors ``evaluate(model, inputs, targets)`` (the form of today's tasks),
    on datasets ``evaluate(model, batches)`` with the validation batches on the trial's device. It returns at
    least ``metric`` (the primary metric, higher is better, also reported as ``score``) and ``val_loss``.
    ``classification_metrics`` takes either form.

    ``test_data`` (optional, the form of ``val_data``) is a split that takes no part in choosing: after the search,
    the recommended configuration's best-epoch checkpoints are scored on it once (``evaluate``), and nothing is
    selected on it. A task with its own trial scores a model on its test split itself: ``score_test(model,
    device)`` returns the metrics its trials report (``metric`` among them; the yolo task: Ultralytics' validator
    on the dataset yaml's ``test:`` split).

    ``has_test``: either form of a test split is there.

    ``sources`` says where each split (``train``, ``val``, ``test``) came from: a path or a description, which
    the runs' MLflow datasets show (``tune.tracker.datasets.describe``; a split missing here is "in memory"). A task
    with its own trial and no data in memory names its splits' folders here; ``also_digested`` names more folders or
    files per split whose names and sizes belong in its digest (the yolo task: the labels folder beside the images).

    ``augments`` says that training inputs change from epoch to epoch (augmentation), which rules out caching a
    frozen prefix. ``probe_train_data`` is the training split as evaluation sees it (no augmentation), which the
    linear probe the heads start from is fitted on (``tune.training.train.fit_head_probe``); None: ``train_data``.
    ``keeps_head``: the model's classifier is pretrained for these very classes (the digits task's MNIST head), not
    new: ``train.head_init: probe`` leaves it as it is (no probe is fitted).
    ``train_loader(batch_size, epoch, seed)`` lets a task build its own training batches (then
    it owns exact resume: epoch e's batches must depend on (seed, e) only; the prefix cache is off).

    What the recommended model takes home (``tune.load_model``): ``classes``, the names of the model's outputs in
    order (the model's class i is ``classes[i]``); ``preprocess``, a picklable callable that turns a list of raw
    inputs (image files or PIL images, strings, arrays: whatever the task's users hold) into one batch the model
    takes (a tensor, or a mapping of tensors for keyword inputs); its ``inputs`` attribute, where it has one, says
    in words what it takes. Both are logged with the model; without them ``predict`` takes the model's own input
    batches and returns class indices.

    A task that trains with its own loop (the ``yolo`` task trains with Ultralytics' trainer) gives
    ``make_trial(task, train_config, device)`` instead of data, a loss and ``evaluate``: it returns a
    ``tune.training.trial.TrialProtocol`` whose epochs report ``tune.training.trial.epoch_metrics``. ``extra_metrics``
    names the metrics its trials report beyond tune.training.trial.METRIC_KEYS. ``ignores`` maps the ``train`` keys its
    trial does not read to what does their work there: a search that sets one (even to its default value) or searches it
    is refused before any trial runs (a warmup the trainer never applies would silently change nothing).
    """

    name: str
    build_model: Callable[[], BlockModel]
    metric: str
    train_data: Any = None
    val_data: Any = None
    loss: Callable[[Any, Any], torch.Tensor] | None = None
    evaluate: Callable[..., Metrics] | None = None
    augments: bool = False
    make_trial: Callable[..., Any] | None = None
    extra_metrics: tuple[str, ...] = ()
    training_step: Callable[[nn.Module, Any], torch.Tensor] | None = None
    train_loader: Callable[[int, int, int], Iterable[Any]] | None = None
    num_workers: int = 0
    test_data: Any = None
    sources: Mapping[str, str] | None = None
    score_test: Callable[[nn.Module, torch.device], Metrics] | None = None
    ignores: Mapping[str, str] | None = None
    also_digested: Mapping[str, Sequence[str]] | None = None
    probe_train_data: Any = None
    keeps_head: bool = False
    classes: Sequence[str] | None = None
    preprocess: Callable[[Sequence[Any]], Any] | None = None

    def __post_init__(self) -> None:
        missing = [name for name in ("train_data", "val_data", "evaluate") if getattr(self, name) is None]
        if self.loss is None and self.training_step is None:
            missing.append("loss")
        if self.make_trial is None and missing:
            raise ValueError(f"task {self.name!r} has no make_trial and no {', '.join(missing)}")

    @property
    def has_test(self) -> bool:
        return self.test_data is not None or self.score_test is not None

    def step(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """One batch's training loss: ``training_step``, or ``loss(model(inputs), targets)``."""
        if self.training_step is not None:
            return self.training_step(model, batch)
        inputs, targets = batch
        return self.loss(model(inputs), targets)


def takes_paths(*options: str, words: Iterable[str] = ()) -> Callable[[_Factory], _Factory]:
    """Declare which options of a task factory name local files or folders: in the driver, each of them that names
    something existing (relative to the working directory, a bare word such as ``my_bert`` included: Hugging Face's
    rule, an existing local path IS that path) becomes an absolute path before the trials, which run in folders of
    their own. ``words`` are values that are never paths (``pretrained``). A list or mapping value is looked into.

        @takes_paths("data", "weights", words=("pretrained",))
        def make_task(data: str, weights: str | None = None) -> Task: ...
    """
    def declare(factory: _Factory) -> _Factory:
        factory.path_options = tuple(options)  # type: ignore[attr-defined]
        factory.path_words = frozenset(words)  # type: ignore[attr-defined]
        return factory

    return declare


def check_option(key: str, value: Any, ok: bool, allowed: str) -> None:
    """A task option's check: unless ``ok``, the one-line ConfigError naming ``task.options.<key>``."""
    if not ok:
        raise ConfigError(f"task.options.{key}", value, allowed)


@torch.no_grad()
def classification_metrics(model: nn.Module, inputs: Any, targets: torch.Tensor | None = None,
                           batch_size: int = 1024) -> Metrics:
    """``val_accuracy`` and ``val_loss`` (mean cross-entropy) of a classifier, in eval mode: on ``(inputs,
    targets)`` tensors, or on ``inputs`` alone as an iterable of ``(inputs, targets)`` batches."""
    model.eval()
    batches = inputs if targets is None else [(inputs[start:start + batch_size], targets[start:start + batch_size])
                                              for start in range(0, len(inputs), batch_size)]
    correct, loss_sum, seen = 0, 0.0, 0
    for batch_inputs, target in batches:
        logits = model(batch_inputs)
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
        seen += len(target)
    return {"val_accuracy": correct / seen, "val_loss": loss_sum / seen}
