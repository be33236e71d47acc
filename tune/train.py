"""Fit one trial: pure torch, no Ray, no MLflow.

``Trial(task, train_config).epochs()`` yields one metrics dict per epoch (names in METRIC_KEYS plus the task's
own metric name); ``run(on_epoch)`` calls ``on_epoch(metrics)`` instead, the form every trial has (a task with its
own trainer, such as yolo, gives its own trial class through ``Task.make_trial``). ``state_dict()`` /
``load_state_dict()`` checkpoint it between epochs; a resumed trial yields exactly what the uninterrupted one
would have (the batch order of epoch e depends on (seed, e) only).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune import freeze, measure
from tune.config import TrainConfig
from tune.tasks.base import Task

__all__ = ["CHECKPOINT_FILE", "METRIC_KEYS", "SharedPrefixCache", "Trial", "first_epoch", "load_checkpoint",
           "make_optimizer", "make_trial", "pick_device", "save_checkpoint", "trial_memory_mb"]

CHECKPOINT_FILE = "trial.pt"

METRIC_KEYS = ("epoch", "score", "val_loss", "train_loss", "epoch_time_s", "train_time_s", "samples_per_s",
               "peak_mem_mb", "rss_mb", "freeze_start", "freeze_stop", "trainable_params", "frozen_params",
               "frozen_flops_share")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class SharedPrefixCache:
    """Frozen-prefix outputs shared by the trials of a search: one file per key under ``directory`` (the search's
    storage folder, which every node of a cluster writes). The key hashes the prefix's weights and buffers, its
    depth and the inputs, so two trials freezing the same prefix of the same weights on the same data pay for it
    once; anything else gets another key. Files are written whole and renamed into place (two trials computing
    the same key at once both write the same bytes) and loaded with weights_only=True."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(prefix: nn.Module, depth: int, *inputs: torch.Tensor) -> str:
        digest = hashlib.sha256(f"depth={depth}".encode())
        for name, tensor in [*prefix.state_dict().items(), *((f"input{i}", t) for i, t in enumerate(inputs))]:
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        return digest.hexdigest()[:32]

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.directory / f"{key}.pt"
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        os.close(handle)
        torch.save({name: t.detach().cpu() for name, t in tensors.items()}, temporary)
        os.replace(temporary, self.directory / f"{key}.pt")


class Trial:
    def __init__(self, task: Task, cfg: TrainConfig, device: torch.device | None = None,
                 shared_cache: SharedPrefixCache | None = None) -> None:
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
        # cached, the blocks after it on the prefix's outputs (computed once; exact, see prefix_cache_blocker).
        blocker = ("off in the config" if cfg.prefix_cache == "off"
                   else freeze.prefix_cache_blocker(self.frozen, task.augments))
        self.prefix_cache = "on" if blocker is None else f"off: {blocker}"
        self.net, self.train_x, self.val_x = self.model, train_x, val_x
        self.cache_bytes, self._cache_time_s = 0, 0.0
        if blocker is None:
            blocks = self.frozen.block_model.blocks
            prefix, self.net = nn.Sequential(*blocks[:spec.stop]), nn.Sequential(*blocks[spec.stop:])
            self.train_x, self.val_x, origin, self._cache_time_s = self._prefix_outputs(
                prefix, spec.stop, train_x, val_x, shared_cache)
            # Training's share, paid once: its time goes into the first epoch's training time and the cached
            # features into training memory. The validation features are evaluation's, which neither counts;
            # features loaded from the shared cache cost their loading, all of it counted.
            self.cache_bytes = measure.tensor_bytes([self.train_x])
            self.prefix_cache = "on" if origin == "computed" else f"on ({origin})"

    def _prefix_outputs(self, prefix: nn.Module, depth: int, train_x: torch.Tensor, val_x: torch.Tensor,
                        shared: SharedPrefixCache | None) -> tuple[torch.Tensor, torch.Tensor, str, float]:
        """The prefix's outputs on the training and validation inputs, where they came from, and training's
        time for them."""
        watch = measure.Stopwatch(self.device)
        key = ""
        if shared is not None:
            with watch.running():  # hashing the weights and the data is part of what sharing costs
                key = shared.key(prefix, depth, train_x, val_x)
                found = shared.get(key)
                if found is not None:
                    found = {name: tensor.to(self.device) for name, tensor in found.items()}
            if found is not None:
                return found["train"], found["val"], "shared, loaded", watch.seconds
        with watch.running():
            train_out = _outputs(prefix, train_x)
        val_out = _outputs(prefix, val_x)
        if shared is None:
            return train_out, val_out, "computed", watch.seconds
        with watch.running():  # writing them for the other trials, too
            shared.put(key, {"train": train_out, "val": val_out})
        return train_out, val_out, "shared, computed", watch.seconds

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
        cfg, device = self.cfg, self.device
        order = self._batch_order()
        watch = measure.Stopwatch(device)
        activations = measure.SavedActivations()
        if device.type == "cuda":
            measure.cuda_peak_mem_mb(device, reset=True)
        loss_sum, seen = 0.0, 0
        self.frozen.train_mode()
        watch.seconds, self._cache_time_s = self._cache_time_s, 0.0
        with watch.running():
            for start in range(0, len(order), cfg.batch_size):
                index = order[start:start + cfg.batch_size]
                # the first batch is a full one: its saved activations are the peak
                loss = self._step(index, activations if start == 0 else None)
                loss_sum += loss * len(index)
                seen += len(index)
        self.epoch += 1
        self.train_time_s += watch.seconds
        train_loss = float(loss_sum) / seen
        evaluation = self.task.evaluate(self.net, self.val_x, self.val_y)
        metrics: dict[str, Any] = {
            "epoch": self.epoch,
            "score": evaluation[self.task.metric],
            **evaluation,
            "train_loss": train_loss,
            "epoch_time_s": watch.seconds,
            "train_time_s": self.train_time_s,
            "samples_per_s": seen / watch.seconds if watch.seconds > 0 else float("nan"),
            "rss_mb": measure.rss_mb(),
            "prefix_cache": self.prefix_cache,
            **self.summary.as_metrics(),
        }
        if not math.isfinite(train_loss):
            self.diverged = True
            metrics["diverged"] = 1
        metrics.update(self._memory(activations))
        return metrics

    def _step(self, index: torch.Tensor, activations: measure.SavedActivations | None = None) -> torch.Tensor:
        """One optimizer step on the training samples ``index`` (recording the activations saved for backward
        into ``activations`` if given); the batch's loss."""
        inputs, targets = self.train_x[index], self.train_y[index]
        with activations.recording(self.model) if activations is not None else contextlib.nullcontext():
            loss = self.task.loss(self.net(inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _memory(self, activations: measure.SavedActivations) -> dict[str, Any]:
        return measure.epoch_memory(self.device, lambda: measure.model_mem_bytes(
            self.model, self.optimizer, activations.peak_bytes) + self.cache_bytes)

    def probe_memory(self) -> float:
        """Peak training memory (MB) from one optimizer step on epoch 1's first batch, without the rest of the
        epoch: the same figure as epoch 1's ``peak_mem_mb`` (that batch holds the activation peak and the
        optimizer's state exists after one step). Spends the trial: build another one to train."""
        if self.device.type == "cuda":
            measure.cuda_peak_mem_mb(self.device, reset=True)
        activations = measure.SavedActivations()
        self.frozen.train_mode()
        self._step(self._batch_order()[:self.cfg.batch_size], activations)
        return self._memory(activations)["peak_mem_mb"]


@torch.no_grad()
def _outputs(prefix: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    prefix.eval()
    return torch.cat([prefix(inputs[start:start + batch_size]) for start in range(0, len(inputs), batch_size)])


def make_trial(task: Task, cfg: TrainConfig, device: torch.device | None = None,
               shared_cache: SharedPrefixCache | None = None) -> Any:
    """The task's own trial (``Task.make_trial``) or the built-in tensor Trial (with the search's shared prefix
    cache, if any)."""
    if task.make_trial is not None:
        return task.make_trial(task, cfg, device)
    return Trial(task, cfg, device, shared_cache)


class _Enough(Exception):
    pass


def first_epoch(trial: Any) -> dict[str, Any]:
    """Run a trial for one epoch only; its metrics."""
    seen: list[dict[str, Any]] = []

    def stop(metrics: dict[str, Any]) -> None:
        seen.append(metrics)
        raise _Enough

    with contextlib.suppress(_Enough):
        trial.run(stop)
    if not seen:
        raise RuntimeError("the trial ended before its first epoch")
    return seen[0]


def trial_memory_mb(trial: Any) -> float:
    """A new trial's training memory (epoch 1's ``peak_mem_mb``): from its ``probe_memory()`` (one optimizer step)
    where it has one, else from a whole first epoch. Spends the trial."""
    probe = getattr(trial, "probe_memory", None)
    return float(probe()) if probe is not None else float(first_epoch(trial)["peak_mem_mb"])


def gpu_shares(task: Task, cfg: TrainConfig, freezes: dict[tuple[int, ...], dict], full_share: float
               ) -> dict[tuple[int, ...], float]:
    """Freeze-aware resources: the GPU share of each set of frozen blocks (``freeze.sampled_freezes``),
    ``full_share`` scaled by its training memory (its first epoch's exact count, measured here) against freezing
    nothing, rounded up to 0.05. One optimizer step per freeze (``trial_memory_mb``), measured on the CPU."""
    def memory(keys: dict) -> float:
        return trial_memory_mb(make_trial(task, replace(cfg, **keys), torch.device("cpu")))

    reference = memory({"freeze": None, "freeze_start": 0, "freeze_stop": 0})
    return {blocks: min(full_share, max(0.05, math.ceil(20 * full_share * memory(keys) / reference) / 20))
            for blocks, keys in freezes.items()}


def save_checkpoint(trial: Trial, directory: str | Path) -> None:
    torch.save(trial.state_dict(), Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A trial's checkpoint (model and optimizer state, epoch, time), loaded with weights_only=True."""
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=True)
