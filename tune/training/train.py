"""Fit one trial on a task's data (in-memory tensors or datasets, ``tune.training.data``): pure torch, no Ray, no
MLflow.

``LoopTrial(task, train_config)`` is the built-in trial (a ``tune.training.trial.TrialProtocol``), this project's own
training loop over the task's data, loss and ``evaluate``; a task with a loop of its own gives its own trial instead
(``Task.make_trial``: the yolo task's ``YoloTrial`` runs Ultralytics' trainer). ``make_trial`` gives whichever the
task has. A LoopTrial's ``epochs()`` yields one metrics dict per epoch (``tune.training.trial.epoch_metrics``),
``run(on_epoch)`` calls ``on_epoch(metrics)`` instead, the form every trial has. ``state_dict()`` /
``load_state_dict()`` checkpoint it between epochs; a resumed trial yields exactly what the uninterrupted one would
have (epoch e's batches and randomness depend on (seed, e) only).

A trial's set-up is one story, ``LoopTrial.__init__``, read top-down, with its helpers above it in the order it calls
them: the device, the seeded and frozen model (``frozen_model``), the head's start (``fit_head_probe``,
``tune.training.probe``), the precision (``tune.training.precision``), the policy (``trial_plan``,
``tune.training.policy``), the optimizer and its schedule, the frozen prefix computed once where that is exact or why
not (one call, ``tune.training.prefix_cache.cached_prefix``); then the loop (``run_epoch``, ``_step``) on the batches
(``tune.training.data``). ``trial_memory`` is what the driver's freeze-aware GPU shares measure
(``tune.driver.resources``): one trial's epoch-1 peak memory from one optimizer step on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from tune.blocks import BlockModel
from tune.settings.config import TrainConfig
from tune.tasks.base import Task
from tune.training import data, freeze, policy, prefix_cache, probe
from tune.training import precision as numerics
from tune.training.trial import EpochMeter, TrialProtocol, epoch_metrics, load_progress, progress

__all__ = ["LoopTrial", "evaluate_split", "fit_head_probe", "frozen_model", "make_optimizer", "make_schedule",
           "make_trial", "parameter_groups", "pick_device", "seeded_model", "trial_memory", "trial_plan"]


# -- a trial's set-up, in the order LoopTrial.__init__ reads: its device, its seeded and frozen model, its head's
# start (fit_head_probe), its policy (trial_plan), its optimizer and schedule --------------------------------------
def pick_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is CUDA where there is one, else the CPU; any other name as it is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seeded_model(task: Task, cfg: TrainConfig) -> BlockModel:
    """The task's model (``task.build_model()``), built right after seeding torch with the trial's seed: the new
    layers a model factory initialises (a head) are the seed's."""
    torch.manual_seed(cfg.seed)
    return task.build_model()


def frozen_model(task: Task, cfg: TrainConfig) -> freeze.FrozenModel:
    """A trial's model: the task's, seeded (``seeded_model``) and frozen as ``cfg`` says (``tune.training.freeze``); a
    task's own trial (``Task.make_trial``, the yolo task's) builds its model with it too."""
    return freeze.freeze_model(seeded_model(task, cfg), cfg)


@torch.no_grad()
def fit_head_probe(task: Task, cfg: TrainConfig, device: torch.device | None = None) -> probe.Probe | None:
    """The linear probe the trials' heads start from (``train.head_init: probe``): the task's pretrained model run
    once, in eval mode, over its training split without augmentation (``Task.probe_train_data``) and its validation
    split; a logistic regression fitted on its classifier's inputs (``tune.training.probe``). Its ``score`` is the
    task's primary metric on the validation split with that head. None for a task with its own trial or no
    classifier."""
    if task.make_trial is not None or task.keeps_head:
        return None
    device = device or pick_device(cfg.device)
    block_model = seeded_model(task, cfg)
    found = probe.classifier_of(block_model)
    if found is None:
        return None
    name, classifier = found
    model = block_model.module.to(device)
    batch_size = cfg.batch_size  # a forward pass without gradients: a training batch fits
    train_split = task.probe_train_data if task.probe_train_data is not None else task.train_data

    def features(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batches = data.batches(split, batch_size, device, num_workers=task.num_workers)
        return probe.probe_features(model, classifier, batches)

    fitted = probe.fit_probe(features(train_split), features(task.val_data), classifier.out_features, name)
    fitted = dataclasses.replace(fitted, head=probe.head_state(block_model, name))
    probe.apply_head_init(block_model, "probe", fitted)
    model.eval()
    score = evaluate_split(task, model, task.val_data, batch_size, device)[task.metric]
    return dataclasses.replace(fitted, score=float(score))


def trial_plan(frozen: freeze.FrozenModel, cfg: TrainConfig) -> policy.Plan:
    """The trial's policy over its frozen model (``policy``): when each block trains, at what rate, and the policy
    as data (its frozen blocks, trained window, decay, thaw and the LoRA adapters on the frozen range, where
    ``tune.training.adapter`` put them), with its label."""
    counts = [sum(p.numel() for p in frozen.block_parameters(i)) for i in range(frozen.block_model.n_blocks)]
    return policy.plan(counts, frozen.spec.blocks, cfg, window=frozen.spec.window,
                       adapted=frozen.adapters is not None)


def parameter_groups(frozen: freeze.FrozenModel, cfg: TrainConfig, plan: policy.Plan | None = None
                     ) -> list[dict[str, Any]]:
    """One optimizer group per block the trial trains (``plan``, by default the config's): the block's parameters
    at ``lr`` times its scale (layer decay; the head block's ``head_lr_mult``), with the block's index (``block``)
    and the epochs done when it starts training (``start``). A block that thaws later is in its group from the
    start: until the thaw it has no gradient, so PyTorch's optimizers neither step it nor hold state for it, and it
    joins at its group's rate. Every trainable parameter is in exactly one group; hard-frozen ones in none."""
    plan = plan or trial_plan(frozen, cfg)
    seen: set[int] = set()
    groups = []
    for block, scale in plan.scales.items():
        params = [p for p in frozen.block_parameters(block) if id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": cfg.lr * scale, "block": block, "start": plan.starts[block]})
    if frozen.adapters is not None:  # LoRA adapters on the frozen range train from the start at lr (``adapter``)
        groups.append({"params": list(frozen.adapters.params), "lr": cfg.lr, "block": min(frozen.adapters.blocks),
                       "start": 0})
    return groups


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter] | list[dict[str, Any]]
                   ) -> torch.optim.Optimizer:
    """The optimizer over ``params``: parameters, or parameter groups (each may set its own ``lr``)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: Callable[[], int]
                  ) -> torch.optim.lr_scheduler.LambdaLR | None:
    """The learning-rate schedule, stepped after every optimizer step (None: constant, no warmup): a linear warmup
    over ``cfg.warmup`` of all steps, then constant or (``lr_schedule: linear``) falling linearly to 0 at the last
    step, the schedule of the Hugging Face fine-tuning recipes. A group that thaws during the run (its ``start``,
    in epochs) warms up again from its thaw over as many steps, on top of the schedule, where a warmup is set."""
    if cfg.lr_schedule == "constant" and not cfg.warmup:
        return None
    per_epoch = steps_per_epoch()
    total = max(1, cfg.epochs * per_epoch)
    warm = int(cfg.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return 1.0 if cfg.lr_schedule == "constant" else max(0.0, (total - step) / max(1, total - warm))

    def joined(start: int) -> Callable[[int], float]:
        if not start or not warm:
            return factor
        return lambda step: factor(step) * (min(1.0, (step - start + 1) / (warm + 1)) if step >= start else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [joined(group.get("start", 0) * per_epoch) for group in optimizer.param_groups])


class LoopTrial:
    """The built-in trial: the task's model, frozen as ``cfg`` says, trained by this project's own loop on the task's
    data (``tune.training.data``), its loss and its ``evaluate``. ``__init__`` is the whole set-up, in order: device,
    head probe (fitted here for a trial on its own), seeded frozen model, head start, precision and memory layout,
    policy, optimizer and schedule, data on the device, the cached frozen prefix or why not."""

    def __init__(self, task: Task, cfg: TrainConfig, device: torch.device | None = None,
                 shared_cache: prefix_cache.SharedPrefixCache | None = None,
                 head_probe: probe.Probe | None = None) -> None:
        self.task = task
        self.cfg = cfg
        self.device = device or pick_device(cfg.device)
        given = head_probe is not None
        kept = cfg.head_init == "probe" and task.keeps_head  # a pretrained head for these classes stays
        if cfg.head_init == "probe" and not given and not kept:  # a trial on its own; a search fits it once
            head_probe = fit_head_probe(task, cfg, self.device)
        self.frozen = frozen_model(task, cfg)  # seeded: the task's model factory may initialise new layers (a head)
        # the classifier's start (a probe fitted on the frozen features, zero, or the library's init); where it came
        # from is the trial's tag head_start
        self.head_init = probe.apply_head_init(self.frozen.block_model, "library" if kept else cfg.head_init,
                                               head_probe)
        self.head_start = ("kept (the task's pretrained head)" if kept else self.head_init + (
            (" (the search's)" if given else " (fitted by this trial)") if self.head_init == "probe" else ""))
        self.model = self.frozen.module.to(self.device)
        # as users train on a GPU: mixed precision (autocast, a GradScaler for 16-mixed) and channels-last convolutions
        self.precision = numerics.resolve(cfg.precision, self.device)
        self.scaler = numerics.grad_scaler(self.precision, self.device)
        self.channels_last = numerics.use_channels_last(cfg.channels_last, self.model, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # the policy (tune.training.policy): which blocks train from when (a thaw), at what rate (layer decay)
        self.plan = trial_plan(self.frozen, cfg)
        self.optimizer = make_optimizer(cfg, parameter_groups(self.frozen, cfg, self.plan))
        self.schedule = make_schedule(cfg, self.optimizer, lambda: self._steps_per_epoch(task))
        self.train_set, self.val_set = (self._on_device(d) for d in (task.train_data, task.val_data))
        self._sets = (self.train_set, self.val_set)  # the task's data, as the whole model reads it after a thaw
        self._loader: data.TrainLoader | None = None
        self.epoch = 0
        self.train_time_s = 0.0
        self.diverged = False
        # a head started from the probe is scored once before training (epoch 0): the probe on this trial's network,
        # a model the trial may end up recommending (fine-tuning that never beats it)
        self.start_scored = self.head_init != "probe"
        # The network trained each step and its data: the whole model on the task's data, or, with a frozen
        # prefix cached, the blocks after it on the prefix's outputs (computed once where exact:
        # tune.training.prefix_cache).
        with self._autocast():  # the prefix's outputs as the uncached prefix gives them in this precision
            cached = prefix_cache.cached_prefix(self.frozen, task, cfg, self.train_set, self.val_set, self.device,
                                                shared_cache)
        if isinstance(cached, str):
            self.prefix_cache = f"off: {cached}"
            self.net, self.replay, self.cached_features, self._cache_time_s = self.model, None, [], 0.0
        else:
            self.prefix_cache = cached.tag + (f" until the thaw after epoch {self.plan.first_thaw}"
                                              if self.plan.first_thaw is not None else "")
            self.net, self.train_set, self.val_set = cached.net, cached.train_set, cached.val_set
            self.replay = cached.replay  # gives a batch's cached hidden states (a chain's cache)
            # Training's share, paid once: its time goes into the first epoch's training time and the cached
            # features into training memory, beside the model's. The validation features are evaluation's, which
            # neither counts; features loaded from the shared cache cost their loading, all of it counted.
            self.cached_features, self._cache_time_s = [cached.features], cached.seconds

    def _autocast(self) -> contextlib.AbstractContextManager:
        return numerics.autocast(self.precision, self.device)

    def _on_device(self, dataset: Any) -> Any:
        return tuple(t.to(self.device) for t in dataset) if data.is_tensor_pair(dataset) else dataset

    @property
    def summary(self) -> freeze.FreezeSummary:
        return self.frozen.summary

    def _steps_per_epoch(self, task: Task) -> int:
        if task.train_loader is not None:
            return len(task.train_loader(self.cfg.batch_size, 0, self.cfg.seed))
        return math.ceil(data.sample_count(task.train_data) / self.cfg.batch_size)

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **progress(self),
                 "start_scored": self.start_scored}
        if self.frozen.adapters is not None:  # what rebuilds and merges the adapters (trial.model_from_checkpoint)
            state["adapter"] = self.frozen.adapters.state()
        if self.schedule is not None:
            state["schedule"] = self.schedule.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        load_progress(self, state)
        self.start_scored = bool(state.get("start_scored", True))
        self._thaw()  # resumed after a thaw: the blocks it unfroze train again (the optimizer's groups held them)

    def _thaw(self) -> None:
        """Unfreeze the blocks whose thaw is due after ``self.epoch`` epochs (``tune.training.policy``): they train from
        the next step on at their group's rate, their BatchNorm in training mode; a cached frozen prefix is no longer
        what the network computes, so training reads the task's data through the whole model from here."""
        due = [block for block, start in self.plan.thaws.items()
               if start <= self.epoch and block not in self.frozen.thawed]
        if not due:
            return
        self.frozen.thaw(due)
        if self.net is not self.model:
            self.net, self.replay, self.cached_features = self.model, None, []
            self.train_set, self.val_set = self._sets
            self._loader = None  # it read the cached hidden states (a chain's); its workers end with it

    def run(self, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        """Train to the end, calling ``on_epoch(metrics)`` after each epoch (the trial can be checkpointed then). A
        head started from the probe is reported first as epoch 0, before any training step (``start_metrics``)."""
        if not self.start_scored:
            self.start_scored = True
            on_epoch(self.start_metrics())
        for metrics in self.epochs():
            on_epoch(metrics)

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Epoch metrics until the last epoch, or until the training loss stops being finite: that epoch is
        yielded with ``diverged: 1`` and the trial ends there."""
        while self.epoch < self.cfg.epochs and not self.diverged:
            yield self.run_epoch()

    def _train_batches(self, epoch: int) -> Iterator[Any]:
        """Epoch ``epoch``'s training batches on the device; they and the epoch's randomness (augmentation,
        dropout) depend on (seed, epoch) only."""
        seed = self.cfg.seed
        data.seed_epoch(seed, epoch)
        if self.task.train_loader is not None:  # the task's own batches (never with a cached prefix: blocker)
            return (data.to_device(batch, self.device) for batch in self.task.train_loader(self.cfg.batch_size,
                                                                                             epoch, seed))
        order = data.epoch_order(data.sample_count(self.train_set), seed, epoch)
        if data.is_tensor_pair(self.train_set):
            return self._fed(data.batches(self.train_set, self.cfg.batch_size, self.device, order=order))
        if self._loader is None:  # built once: its workers persist from epoch to epoch
            self._loader = data.TrainLoader(self.train_set, self.cfg.batch_size, self.device, self.task.num_workers)
        return self._fed(self._loader.epoch(order, seed, epoch))

    def _fed(self, batches: Iterator[Any]) -> Iterator[Any]:
        """Batches for ``self.net``: with a cached chain, each one's hidden states handed to its replay."""
        return batches if self.replay is None else self.replay.feeding(batches)

    def _evaluate(self) -> dict[str, float]:
        with self._autocast():
            return evaluate_split(self.task, self.net, self.val_set, self.cfg.batch_size, self.device, self._fed)

    def run_epoch(self) -> dict[str, Any]:
        self._thaw()
        frozen_share = self.frozen.frozen_flops_share()  # this epoch's (a thaw changes it)
        meter = EpochMeter(self.device)
        loss_sum, seen = 0.0, 0
        self.frozen.train_mode(self.net)
        meter.start(self._cache_time_s)  # the prefix cache's first computation is training's time
        self._cache_time_s = 0.0
        with meter.timing():
            for number, batch in enumerate(self._train_batches(self.epoch)):
                loss = self._step(batch, meter if number == 0 else None)  # the first batch is a full one
                size = data.batch_size_of(batch)
                loss_sum += loss * size
                seen += size
        self.epoch += 1
        self.train_time_s += meter.seconds
        memory = meter.memory(self.model, self.optimizer, self.cached_features)
        evaluation = self._evaluate()
        metrics = epoch_metrics(epoch=self.epoch, score=evaluation[self.task.metric], val_loss=evaluation["val_loss"],
                                train_loss=float(loss_sum) / seen, epoch_time_s=meter.seconds,
                                train_time_s=self.train_time_s, samples=seen, prefix_cache=self.prefix_cache,
                                summary=self.summary, memory=memory, task_metrics=evaluation)
        metrics.update(self._how(), epoch_frozen_flops_share=frozen_share)
        self.diverged = "diverged" in metrics
        return metrics

    def start_metrics(self) -> dict[str, Any]:
        """Epoch 0: the validation metrics of the model as it starts (the probe's head on the pretrained network),
        with the trial's freeze summary; no training time (0 s) and nothing a training epoch measures (NaN: not
        logged)."""
        evaluation = self._evaluate()
        metrics = epoch_metrics(epoch=0, score=evaluation[self.task.metric], val_loss=evaluation["val_loss"],
                                train_loss=0.0, epoch_time_s=math.nan, train_time_s=0.0, samples=0,
                                prefix_cache=self.prefix_cache, summary=self.summary,
                                memory={"peak_mem_mb": math.nan}, task_metrics=evaluation)
        metrics.update(train_loss=math.nan, rss_mb=math.nan, **self._how())
        return metrics

    def _how(self) -> dict[str, str]:
        """How the trial trains: its policy's label and params (its run's), the head's start, the precision, the
        memory layout (tags)."""
        return {"policy": self.plan.label, "policy_params": self.plan.policy.params(), "head_start": self.head_start,
                "precision": self.precision, "channels_last": "on" if self.channels_last else "off"}

    def _step(self, batch: Any, meter: EpochMeter | None = None) -> torch.Tensor:
        """One optimizer step on ``batch`` (recording the activations saved for backward into ``meter`` if
        given); the batch's loss."""
        if self.channels_last:
            batch = numerics.to_channels_last(batch)
        with meter.recording(self.model) if meter is not None else contextlib.nullcontext(), self._autocast():
            loss = self.task.step(self.net, batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # 16-mixed: the loss scaled so that float16 gradients do not underflow; steps with inf/NaN skipped
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.schedule is not None:
            self.schedule.step()
        return loss.detach()

    def measure_memory(self) -> float:
        """Peak training memory (MB) from one optimizer step on epoch 1's first batch, without the rest of the
        epoch: the same figure as epoch 1's ``peak_mem_mb`` (that batch holds the activation peak and the
        optimizer's state exists after one step); a trial that thaws is measured after its last thaw, its peak.
        Spends the trial: build another one to train."""
        self.epoch = max(self.plan.thaws.values(), default=0)
        self._thaw()
        meter = EpochMeter(self.device)
        meter.start()
        self.frozen.train_mode(self.net)
        self._step(next(iter(self._train_batches(0))), meter)
        return meter.memory(self.model, self.optimizer, self.cached_features)["peak_mem_mb"]


def evaluate_split(task: Task, model: nn.Module, split: Any, batch_size: int, device: torch.device,
                   fed: Callable[[Iterator[Any]], Iterable[Any]] = iter) -> dict[str, float]:
    """``task.evaluate`` on a split in either form: tensors on ``device`` as they are, a dataset as batches (passed
    through ``fed`` first)."""
    if data.is_tensor_pair(split):
        return task.evaluate(model, *(t.to(device) for t in split))
    return task.evaluate(model, fed(data.batches(split, batch_size, device, num_workers=task.num_workers)))


def make_trial(task: Task, cfg: TrainConfig, device: torch.device | None = None,
               shared_cache: prefix_cache.SharedPrefixCache | None = None,
               head_probe: probe.Probe | None = None) -> TrialProtocol:
    """The task's own trial (``Task.make_trial``) or the built-in LoopTrial (with the search's shared prefix cache and
    its fitted probe, if any)."""
    if task.make_trial is None:
        return LoopTrial(task, cfg, device, shared_cache, head_probe)
    trial = task.make_trial(task, cfg, device)
    if not isinstance(trial, TrialProtocol):  # the attributes and methods a search calls, present
        missing = [name for name in ("epoch", "device", "run", "state_dict", "load_state_dict", "measure_memory")
                   if not hasattr(trial, name) and not (name == "measure_memory" and hasattr(trial, "probe_memory"))]
        if missing:
            raise TypeError(f"task {task.name!r}: make_trial gave a {type(trial).__name__} without "
                            f"{', '.join(missing)} (tune.training.trial.TrialProtocol)")
    return trial


def trial_memory(task: Task, cfg: TrainConfig, freeze_keys: dict[str, Any]) -> float:
    """Epoch 1's peak training memory (MB) of the trial ``cfg`` gives with ``freeze_keys`` (the train keys of one
    freeze, ``space_freezes.sampled_freezes``), measured after one optimizer step (``measure_memory``) on the CPU. Its
    head starts as the library builds it: the head's start changes no memory, so no linear probe is fitted for it."""
    trial = make_trial(task, dataclasses.replace(cfg, **{**freeze_keys, "head_init": "library"}), torch.device("cpu"))
    measure = getattr(trial, "measure_memory", None) or trial.probe_memory
    return float(measure())
