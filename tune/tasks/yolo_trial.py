"""The yolo task's trial: Ultralytics' own DetectionTrainer on the model the task built (tune.tasks.yolo), with four
differences, all in :class:`YoloTrial`: frozen parameters are left out of the optimizer (YOLOv5's train.py keeps them
in, which changes nothing numerically: PyTorch's optimizers skip parameters without a gradient, weight decay
included); ``frozen_bn: eval`` (the default, as Ultralytics does) keeps frozen BatchNorm statistics fixed,
``frozen_bn: train`` lets them drift as YOLOv5's train.py does (the guide's behaviour); checkpoints are state dicts
written by this project, not Ultralytics' pickled ``last.pt``; and the final re-validation of ``best.pt`` is skipped
(every epoch is validated). Each epoch reports Ultralytics' box metrics under the task's names with the trial's own
time and memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tune.settings.config import TrainConfig
from tune.tasks.base import Task
from tune.tasks.yolo_offline import offline_copy, offline_hooks, ultralytics_offline
from tune.training.prefix_cache import blocker
from tune.training.train import frozen_model, pick_device
from tune.training.trial import EpochMeter, epoch_metrics, load_progress, progress

__all__ = ["YoloTrial"]

_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def _box_metrics(found: Mapping[str, Any]) -> dict[str, float]:
    """Ultralytics' box metrics (``metrics/mAP50-95(B)``, ...) under this task's names; NaN for one it lacks."""
    return {name: float(found.get(f"metrics/{name}(B)", float("nan")))
            for name in ("mAP50-95", "mAP50", "precision", "recall")}


def _device_arg(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else str(device.index or 0)


class YoloTrial:
    """One trial (``tune.training.trial.TrialProtocol``): Ultralytics' DetectionTrainer on a model built by the task,
    frozen as ``cfg`` says, reporting each epoch through ``run(on_epoch)`` and checkpointable between epochs. Its set-up
    is the built-in ``tune.training.train.LoopTrial``'s: the model seeded and frozen by
    ``tune.training.train.frozen_model``, the epochs done and their time checkpointed by
    ``tune.training.trial.progress``."""

    def __init__(self, task: Task, cfg: TrainConfig, options: Mapping[str, Any],
                 device: torch.device | None = None) -> None:
        self.task, self.cfg, self.options = task, cfg, options
        self.device = device or pick_device(cfg.device)
        self.frozen = frozen_model(task, cfg)
        self.summary = self.frozen.summary
        # never cached (this loop is Ultralytics'): off, with the first reason the built-in trial would not cache it
        self.prefix_cache = f"off: {blocker(self.frozen, task.augments)}"
        self.epoch = 0
        self.train_time_s = 0.0
        self._restore: dict[str, Any] | None = None
        self.trainer: Any = None

    def state_dict(self) -> dict[str, Any]:
        """``model`` holds the weights each epoch was validated with (Ultralytics validates its EMA), so a logged
        model scores what its trial reported; ``train_model`` the weights being trained, to resume."""
        trainer = self.trainer
        return {"model": trainer.ema.ema.state_dict(), "train_model": trainer.model.state_dict(),
                "ema_updates": int(trainer.ema.updates), "optimizer": trainer.optimizer.state_dict(), **progress(self),
                "best_fitness": float(trainer.best_fitness or 0.0),
                # AMP's loss scale (empty when AMP is off) and the early-stopping counter (patience), as
                # Ultralytics' own last.pt keeps them; plain numbers, so weights_only loading takes them
                "scaler": {k: v.item() if torch.is_tensor(v) else v for k, v in trainer.scaler.state_dict().items()},
                "stopper": {"best_fitness": None if trainer.stopper.best_fitness is None
                            else float(trainer.stopper.best_fitness), "best_epoch": int(trainer.stopper.best_epoch)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Applied when training starts (the trainer builds the optimizer and EMA then)."""
        self._restore = state
        load_progress(self, state)

    def run(self, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        if self.epoch >= self.cfg.epochs:
            return
        with tempfile.TemporaryDirectory(prefix="yolo-trial-") as workdir, offline_hooks():
            self.trainer = _make_trainer(self, Path(workdir), on_epoch)
            self.trainer.train()

    def measure_memory(self) -> float:
        """Peak training memory (MB) up to Ultralytics' first optimizer step (one batch, or a few where it
        accumulates gradients), without the rest of the epoch or validation: epoch 1's ``peak_mem_mb`` (the first
        batch holds the activation peak; the optimizer's state and the EMA exist after one step). Still builds the
        trainer and its data loaders. Spends the trial."""
        def no_epoch(metrics: dict[str, Any]) -> None:
            raise RuntimeError("the memory measurement reached the end of an epoch")

        with tempfile.TemporaryDirectory(prefix="yolo-memory-") as workdir, offline_hooks():
            self.trainer = _make_trainer(self, Path(workdir), no_epoch, measure_only=True)
            try:
                self.trainer.train()
            except _Measured as measured:
                return measured.peak_mem_mb
        raise RuntimeError("the trial ended before its first optimizer step")


class _Measured(Exception):
    """Ends a memory measurement (YoloTrial.measure_memory) at the first optimizer step, carrying its peak memory."""

    def __init__(self, peak_mem_mb: float) -> None:
        super().__init__(peak_mem_mb)
        self.peak_mem_mb = peak_mem_mb


def _make_trainer(trial: YoloTrial, workdir: Path, on_epoch: Callable[[dict[str, Any]], None],
                  measure_only: bool = False) -> Any:
    ultralytics_offline()
    from ultralytics.models.yolo.detect import DetectionTrainer

    cfg, options = trial.cfg, trial.options
    frozen_bn_train = cfg.frozen_bn == "train"

    class Trainer(DetectionTrainer):
        def _model_train(self) -> None:
            if frozen_bn_train:  # YOLOv5's train.py: frozen BatchNorm statistics keep updating
                self.model.train()
            else:
                super()._model_train()

        def build_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
            optimizer = super().build_optimizer(*args, **kwargs)
            for group in optimizer.param_groups:  # frozen parameters are not the optimizer's
                group["params"] = [p for p in group["params"] if p.requires_grad]
            return optimizer

        def resume_training(self, ckpt: Any) -> None:
            state = trial._restore
            if state is None:
                return
            self.model.load_state_dict(state["train_model"])
            self.ema.ema.load_state_dict(state["model"])
            self.ema.updates = state["ema_updates"]
            self.optimizer.load_state_dict(state["optimizer"])
            self.best_fitness = state["best_fitness"]
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.stopper.__dict__.update(state.get("stopper") or {})
            self.start_epoch = int(state["epoch"])

        def optimizer_step(self) -> None:
            super().optimizer_step()
            self.optimizer_steps = getattr(self, "optimizer_steps", 0) + 1

        def save_model(self) -> bool:  # checkpoints are the trial's state_dict, taken by the search
            return False

        def final_eval(self) -> None:  # every epoch was validated; no best.pt to re-validate
            return None

        def _handle_nan_recovery(self, epoch: int) -> bool:  # a non-finite loss ends the trial (diverged), as
            return False  # for every task; Ultralytics would reload a last.pt this project does not write

    hyp = dict(options["hyp"])
    overrides = {
        **hyp, "model": "unused.yaml", "data": offline_copy(options["data"], options["data_raw"], workdir),
        "imgsz": options["imgsz"],
        "workers": options["workers"], "epochs": cfg.epochs, "batch": cfg.batch_size, "lr0": cfg.lr,
        "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "optimizer": _OPTIMIZERS[cfg.optimizer],
        "freeze": list(trial.frozen.spec.blocks), "seed": cfg.seed, "device": _device_arg(trial.device),
        "project": str(workdir), "name": "train", "exist_ok": True, "save": False, "plots": False, "val": True,
        "verbose": False, "amp": hyp.get("amp", trial.device.type == "cuda"),
    }
    trainer = Trainer(overrides=overrides)  # inside offline_hooks: no integrations, no downloads
    trainer.model = trial.frozen.module  # built (and pretrained) by the task, as DetectionTrainer allows
    _EpochReporter(trial, trainer, on_epoch, measure_only).attach()
    return trainer


class _EpochReporter:
    """Callbacks that time each epoch's training, count its memory and report its metrics."""

    def __init__(self, trial: YoloTrial, trainer: Any, on_epoch: Callable[[dict[str, Any]], None],
                 measure_only: bool = False) -> None:
        self.trial, self.trainer, self.on_epoch, self.measure_only = trial, trainer, on_epoch, measure_only
        self.meter = EpochMeter(trial.device)
        self._recording: Any = None
        self._timing: Any = None
        self._first_batch = True
        self._memory: dict[str, Any] = {}

    def attach(self) -> None:
        for event in ("on_pretrain_routine_end", "on_train_epoch_start", "on_train_batch_start",
                      "on_train_batch_end", "on_train_epoch_end", "on_fit_epoch_end"):
            self.trainer.add_callback(event, getattr(self, event))

    def on_pretrain_routine_end(self, trainer: Any) -> None:
        ours = {id(p) for p in self.trial.frozen.trainable_parameters()}
        theirs = {id(p) for p in trainer.model.parameters() if p.requires_grad}
        dfl = {id(p) for name, p in trainer.model.named_parameters() if ".dfl" in name}
        if theirs != ours - dfl:  # Ultralytics froze by its name rule: it must be our block set
            raise RuntimeError("Ultralytics froze other parameters than the freeze spec")

    def on_train_epoch_start(self, trainer: Any) -> None:
        # After a CUDA out-of-memory error in epoch 1 Ultralytics halves the batch and starts the epoch again
        # (the interrupted batch never reached on_train_batch_end): close what it left open, and fail the trial
        # as any out-of-memory trial fails; a smaller batch is not the configuration the search compares.
        if self._recording is not None:
            self._recording.__exit__(None, None, None)
            self._recording = None
        if self._timing is not None:
            self._timing.__exit__(None, None, None)
            self._timing = None
        if trainer.batch_size != self.trial.cfg.batch_size:
            raise RuntimeError(f"out of memory at epoch {trainer.epoch + 1}: Ultralytics retried with batch "
                               f"{trainer.batch_size} instead of {self.trial.cfg.batch_size}")
        self.meter.start()
        self._first_batch = True
        self._timing = self.meter.timing()  # training only: data loading included, validation not
        self._timing.__enter__()

    def on_train_batch_start(self, trainer: Any) -> None:
        if self._first_batch:  # the first batch is a full one: its saved activations are the peak
            self._recording = self.meter.recording(trainer.model)
            self._recording.__enter__()

    def on_train_batch_end(self, trainer: Any) -> None:
        if self._first_batch and self._recording is not None:
            self._recording.__exit__(None, None, None)
            self._recording, self._first_batch = None, False
        if self.measure_only and getattr(trainer, "optimizer_steps", 0):
            self.on_train_epoch_end(trainer)
            raise _Measured(self._memory["peak_mem_mb"])

    def on_train_epoch_end(self, trainer: Any) -> None:
        self._timing.__exit__(None, None, None)
        self._timing = None
        # training's memory, read before validation (which runs at twice the batch size) can raise the peak
        self._memory = self.meter.memory(trainer.model, trainer.optimizer,  # the EMA copy lives beside the model
                                         trainer.ema.ema.state_dict().values())

    def on_fit_epoch_end(self, trainer: Any) -> None:
        trial = self.trial
        trial.epoch = trainer.epoch + 1
        trial.train_time_s += self.meter.seconds
        metrics = self._metrics(trainer)
        if metrics.get("diverged"):
            trainer.stop = True  # the trial ends at this epoch, as a tensor trial does
        self.on_epoch(metrics)

    def _metrics(self, trainer: Any) -> dict[str, Any]:
        trial = self.trial
        found = trainer.metrics or {}

        def metric(name: str) -> float:
            return float(found.get(name, float("nan")))

        train_losses = {name: float(value) for name, value in (trainer.tloss or {}).items()}
        val_losses = {f"val_{name}": metric(f"val/{name}") for name in ("box_loss", "cls_loss", "dfl_loss")}
        own = {**_box_metrics(found),
               **{f"{name}_loss" if not name.endswith("_loss") else name: v for name, v in train_losses.items()},
               **val_losses}
        return epoch_metrics(epoch=trial.epoch, score=own["mAP50-95"], val_loss=sum(val_losses.values()),
                             train_loss=sum(train_losses.values()) if train_losses else float("nan"),
                             epoch_time_s=self.meter.seconds, train_time_s=trial.train_time_s,
                             samples=len(trainer.train_loader.dataset), prefix_cache=trial.prefix_cache,
                             summary=trial.summary, memory=self._memory, task_metrics=own)
