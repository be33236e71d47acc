"""What every trial is, and what every trial may use: the trial protocol, its epoch meter and per-epoch metrics, its
progress and checkpoint.

A trial trains one configuration of a task: the built-in trial (``tune.training.train.LoopTrial``, this project's own
loop) and a task's own (``Task.make_trial``, e.g. the yolo task's ``YoloTrial``, Ultralytics' trainer) both implement
``TrialProtocol``, build their model with ``tune.training.train.frozen_model`` (seeded, then frozen), checkpoint their
``progress`` under the same keys and build each epoch's metrics with ``epoch_metrics``, so every task reports the
same keys (``METRIC_KEYS``) and follows the same divergence rule. Pure torch: no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from tune.training import measure
from tune.training.freeze import FreezeSummary

__all__ = ["CHECKPOINT_FILE", "METRIC_KEYS", "EpochMeter", "TrialProtocol", "epoch_metrics", "known_metrics",
           "load_checkpoint", "load_progress", "model_from_checkpoint", "progress", "save_checkpoint"]

CHECKPOINT_FILE = "trial.pt"

# Reported by every trial every epoch (design.md's metric vocabulary), beside the task's own metric names.
METRIC_KEYS = ("epoch", "score", "val_loss", "train_loss", "epoch_time_s", "train_time_s", "samples_per_s",
               "peak_mem_mb", "rss_mb", "freeze_start", "freeze_stop", "trainable_params", "frozen_params",
               "frozen_flops_share")


@runtime_checkable
class TrialProtocol(Protocol):
    """One trial: trains to its last epoch, reporting each; checkpointable between epochs.

    ``run(on_epoch)`` trains from ``epoch`` (the epochs done) to the config's last, calling ``on_epoch(metrics)``
    after each (``epoch_metrics``); the trial can be checkpointed inside that call. ``state_dict()`` /
    ``load_state_dict()`` save and restore it so that a resumed trial reports what the uninterrupted one would
    have; ``state_dict()["model"]`` holds the weights the epoch was scored with. ``measure_memory()`` returns epoch 1's
    ``peak_mem_mb`` from a single optimizer step and spends the trial (freeze-aware GPU shares); a trial of a task's
    own that names it ``probe_memory()`` is measured through that name."""

    epoch: int
    device: torch.device

    def run(self, on_epoch: Callable[[dict[str, Any]], None]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def measure_memory(self) -> float: ...


class EpochMeter:
    """An epoch's training time and peak training memory, measured the same way in every trial.

    ``start()`` at the epoch's start (it resets the CUDA allocator's peak); ``timing()`` around training (the clock
    is synchronised with the device); ``recording(model)`` around the first batch's forward pass, a full batch whose
    saved activations are the peak; ``memory(...)`` after training, before validation (which could raise the peak):
    the allocator's peak on a GPU, else the exact count (tune.training.measure)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.watch = measure.Stopwatch(device)
        self.activations = measure.SavedActivations()

    def start(self, seconds: float = 0.0) -> None:
        """A new epoch; ``seconds`` of training already spent on it (a prefix cache's first computation)."""
        if self.device.type == "cuda":
            measure.cuda_peak_mem_mb(self.device, reset=True)
        self.watch.seconds = seconds
        self.activations = measure.SavedActivations()

    @property
    def seconds(self) -> float:
        return self.watch.seconds

    def timing(self) -> AbstractContextManager[None]:
        return self.watch.running()

    @contextmanager
    def recording(self, model: torch.nn.Module) -> Iterator[None]:
        with self.activations.recording(model):
            yield

    def memory(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               also_held: Iterable[torch.Tensor] = ()) -> dict[str, Any]:
        """``peak_mem_mb`` and ``mem_source`` (and ``gpu_util_pct`` on a GPU): parameters, gradients, optimizer
        state, the recorded activations and ``also_held`` (what else training holds: cached features, an EMA)."""
        return measure.epoch_memory(self.device, lambda: measure.model_mem_bytes(
            model, optimizer, self.activations.peak_bytes) + measure.tensor_bytes(also_held))


def epoch_metrics(*, epoch: int, score: float, val_loss: float, train_loss: float, epoch_time_s: float,
                  train_time_s: float, samples: int, prefix_cache: str, summary: FreezeSummary,
                  memory: Mapping[str, Any], task_metrics: Mapping[str, Any] = ()) -> dict[str, Any]:
    """One epoch's metrics, the same keys for every trial: ``METRIC_KEYS``, the task's own metrics, ``mem_source``
    and ``prefix_cache`` (tags), and ``diverged: 1`` when the training loss is not finite: the trial ends there."""
    metrics: dict[str, Any] = {
        "epoch": epoch, "score": score, **dict(task_metrics), "val_loss": val_loss, "train_loss": train_loss,
        "epoch_time_s": epoch_time_s, "train_time_s": train_time_s,
        "samples_per_s": samples / epoch_time_s if epoch_time_s > 0 else float("nan"),
        "rss_mb": measure.rss_mb(), "prefix_cache": prefix_cache, **summary.as_metrics(), **memory,
    }
    if not math.isfinite(train_loss):
        metrics["diverged"] = 1
    return metrics


def known_metrics(task_metric: str, extra_metrics: tuple[str, ...] = ()) -> list[str]:
    """The metric names a task's trials report: what ``search.objectives`` may name."""
    return list(dict.fromkeys([*METRIC_KEYS, task_metric, *extra_metrics]))


def progress(trial: Any) -> dict[str, Any]:
    """What every trial's checkpoint holds beside its own state: the epochs done and their training time."""
    return {"epoch": trial.epoch, "train_time_s": trial.train_time_s}


def load_progress(trial: Any, state: Mapping[str, Any]) -> None:
    """Restore what ``progress`` saved."""
    trial.epoch = int(state["epoch"])
    trial.train_time_s = float(state["train_time_s"])


def save_checkpoint(trial: TrialProtocol, directory: str | Path) -> None:
    torch.save(trial.state_dict(), Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A trial's checkpoint (model and optimizer state, epoch, time), loaded with weights_only=True."""
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=True)


def model_from_checkpoint(task: Any, checkpoint: Any) -> tuple[Any, dict[str, Any]]:
    """The task's model (a BlockModel) with a trial checkpoint's weights, in eval mode, and the checkpoint's state;
    ``checkpoint`` is a Ray Tune Checkpoint (a local folder, or one fetched from the storage URI)."""
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    block_model = task.build_model()
    if state.get("adapter"):  # a LoRA trial's: its adapters merged into the base weights, a plain module again
        from tune.training import adapter

        block_model = adapter.merged(block_model, state["model"], state["adapter"])
    else:
        block_model.module.load_state_dict(state["model"])
    block_model.module.eval()
    return block_model, state
