"""Fit one trial on in-memory tensors: pure torch, no Ray, no MLflow.

``Trial(task, train_config)`` is the built-in trial (``tune.trial.TrialProtocol``): ``epochs()`` yields one metrics
dict per epoch (``tune.trial.epoch_metrics``), ``run(on_epoch)`` calls ``on_epoch(metrics)`` instead, the form every
trial has. ``state_dict()`` / ``load_state_dict()`` checkpoint it between epochs; a resumed trial yields exactly what
the uninterrupted one would have (the batch order of epoch e depends on (seed, e) only). A frozen prefix is
computed once where that is exact (``tune.prefix_cache``). ``make_trial`` gives a task's own trial where it has one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from tune import freeze, prefix_cache
from tune.config import TrainConfig
from tune.tasks.base import Task
from tune.trial import EpochMeter, TrialProtocol, epoch_metrics, pick_device

__all__ = ["Trial", "make_optimizer", "make_trial"]


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trial:
    """The built-in trial: the task's model, frozen as ``cfg`` says, trained on the task's tensors."""

    def __init__(self, task: Task, cfg: TrainConfig, device: torch.device | None = None,
                 shared_cache: prefix_cache.SharedPrefixCache | None = None) -> None:
        self.task = task
        self.cfg = cfg
        self.device = device or pick_device(cfg.device)
        torch.manual_seed(cfg.seed)  # the task's model factory may initialise new layers (e.g. a head)
        block_model = task.build_model()
        self.frozen = freeze.freeze_model(block_model, cfg)
        spec = self.frozen.spec
        self.model = self.frozen.module.to(self.device)
        self.optimizer = make_optimizer(cfg, self.frozen.trainable_parameters())
        train_x, self.train_y = (t.to(self.device) for t in task.train_data)
        val_x, self.val_y = (t.to(self.device) for t in task.val_data)
        self.epoch = 0
        self.train_time_s = 0.0
        self.diverged = False
        # The network trained each step and its inputs: the whole model on the data, or, with a frozen prefix
        # cached, the blocks after it on the prefix's outputs (computed once where exact: tune.prefix_cache).
        blocker = prefix_cache.blocker(self.frozen, task.augments, cfg.prefix_cache)
        self.prefix_cache = "on" if blocker is None else f"off: {blocker}"
        self.net, self.train_x, self.val_x = self.model, train_x, val_x
        self.cached_features: list[torch.Tensor] = []  # training memory beside the model's
        self._cache_time_s = 0.0
        if blocker is None:
            blocks = self.frozen.block_model.blocks
            prefix, self.net = nn.Sequential(*blocks[:spec.stop]), nn.Sequential(*blocks[spec.stop:])
            self.train_x, self.val_x, origin, self._cache_time_s = prefix_cache.prefix_outputs(
                prefix, spec.stop, train_x, val_x, shared_cache, self.device)
            # Training's share, paid once: its time goes into the first epoch's training time and the cached
            # features into training memory. The validation features are evaluation's, which neither counts;
            # features loaded from the shared cache cost their loading, all of it counted.
            self.cached_features = [self.train_x]
            self.prefix_cache = "on" if origin == "computed" else f"on ({origin})"

    @property
    def summary(self) -> freeze.FreezeSummary:
        return self.frozen.summary

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "train_time_s": self.train_time_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.train_time_s = float(state["train_time_s"])

    def run(self, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        """Train to the end, calling ``on_epoch(metrics)`` after each epoch (the trial can be checkpointed then)."""
        for metrics in self.epochs():
            on_epoch(metrics)

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Epoch metrics until the last epoch, or until the training loss stops being finite: that epoch is
        yielded with ``diverged: 1`` and the trial ends there."""
        while self.epoch < self.cfg.epochs and not self.diverged:
            yield self.run_epoch()

    def _batch_order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.train_x), generator=generator).to(self.device)

    def run_epoch(self) -> dict[str, Any]:
        cfg = self.cfg
        order = self._batch_order()
        meter = EpochMeter(self.device)
        loss_sum, seen = 0.0, 0
        self.frozen.train_mode()
        meter.start(self._cache_time_s)  # the prefix cache's first computation is training's time
        self._cache_time_s = 0.0
        with meter.timing():
            for start in range(0, len(order), cfg.batch_size):
                index = order[start:start + cfg.batch_size]
                loss = self._step(index, meter if start == 0 else None)  # the first batch is a full one
                loss_sum += loss * len(index)
                seen += len(index)
        self.epoch += 1
        self.train_time_s += meter.seconds
        memory = meter.memory(self.model, self.optimizer, self.cached_features)
        evaluation = self.task.evaluate(self.net, self.val_x, self.val_y)
        metrics = epoch_metrics(epoch=self.epoch, score=evaluation[self.task.metric], val_loss=evaluation["val_loss"],
                                train_loss=float(loss_sum) / seen, epoch_time_s=meter.seconds,
                                train_time_s=self.train_time_s, samples=seen, prefix_cache=self.prefix_cache,
                                summary=self.summary, memory=memory, task_metrics=evaluation)
        self.diverged = "diverged" in metrics
        return metrics

    def _step(self, index: torch.Tensor, meter: EpochMeter | None = None) -> torch.Tensor:
        """One optimizer step on the training samples ``index`` (recording the activations saved for backward
        into ``meter`` if given); the batch's loss."""
        inputs, targets = self.train_x[index], self.train_y[index]
        with meter.recording(self.model) if meter is not None else contextlib.nullcontext():
            loss = self.task.loss(self.net(inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def probe_memory(self) -> float:
        """Peak training memory (MB) from one optimizer step on epoch 1's first batch, without the rest of the
        epoch: the same figure as epoch 1's ``peak_mem_mb`` (that batch holds the activation peak and the
        optimizer's state exists after one step). Spends the trial: build another one to train."""
        meter = EpochMeter(self.device)
        meter.start()
        self.frozen.train_mode()
        self._step(self._batch_order()[:self.cfg.batch_size], meter)
        return meter.memory(self.model, self.optimizer, self.cached_features)["peak_mem_mb"]


def make_trial(task: Task, cfg: TrainConfig, device: torch.device | None = None,
               shared_cache: prefix_cache.SharedPrefixCache | None = None) -> TrialProtocol:
    """The task's own trial (``Task.make_trial``) or the built-in tensor Trial (with the search's shared prefix
    cache, if any)."""
    if task.make_trial is None:
        return Trial(task, cfg, device, shared_cache)
    trial = task.make_trial(task, cfg, device)
    if not isinstance(trial, TrialProtocol):  # the attributes and methods a search calls, present
        missing = [name for name in ("epoch", "device", "run", "state_dict", "load_state_dict", "probe_memory")
                   if not hasattr(trial, name)]
        raise TypeError(f"task {task.name!r}: make_trial gave a {type(trial).__name__} without {', '.join(missing)} "
                        "(tune.trial.TrialProtocol)")
    return trial
