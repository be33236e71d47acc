"""Which blocks to freeze, freezing them, and what it froze. Knows no task, and no model but its blocks: the
block vocabulary (``BlockModel``) and its FLOP counts are ``tune.blocks``'.

Semantics (the YOLOv5 / Ultralytics ones, kept exactly):
- ``freeze: N`` freezes blocks [0, N): YOLOv5's ``--freeze 10`` freezes its backbone, blocks 0-9.
- ``freeze: [i, j, ...]`` freezes exactly those blocks.
- ``freeze_start: a, freeze_stop: b`` freezes [a, b), the searchable form; ``freeze_start`` defaults to 0.
- ``train_start: a, train_stop: b`` trains the window [a, b) and the head, and freezes the rest: blocks [0, a) and
  [b, head), the head being the last block (surgical fine-tuning: train only the block the shift calls for). Either
  bound alone: ``train_start`` defaults to 0, ``train_stop`` to the head. A window that reaches the head freezes the
  prefix [0, a), a hard freeze, and is named so; any other is named ``train [a, b)``.
- a name (``none``, ``backbone``, ``all_but_head``, or any cut point of the model) stands for its block count.

Frozen parameters get ``requires_grad=False`` and are left out of the optimizer. Frozen BatchNorm layers stay
in eval mode by default so their running statistics do not drift; ``frozen_bn="train"`` lets them update, as
YOLOv5's train.py does. The rest of the frozen blocks runs in eval mode too by default (no dropout, no stochastic
depth, no attention dropout: the frozen part is a fixed feature extractor); ``frozen_dropout="train"`` leaves it
in training mode as ``model.train()`` would. What a whole space's freeze dimensions give on a model (checked,
enumerated) is ``tune.training.space_freezes``'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from tune.blocks import BlockModel, block_flops
from tune.errors import ConfigError
from tune.settings.policy import Policy
from tune.settings.space import FREEZE_KEYS, in_order, is_int

__all__ = ["FREEZE_KEYS", "FreezeSpec", "FreezeSummary", "FrozenModel", "freeze_keys", "freeze_model", "resolve",
           "resolve_index"]


@dataclass(frozen=True)
class FreezeSpec:
    blocks: tuple[int, ...]  # sorted, unique block indices to freeze
    window: tuple[int, int] | None = None  # a trained window [a, b) (train_start / train_stop): what it came from

    @property
    def start(self) -> int:
        return self.blocks[0] if self.blocks else 0

    @property
    def stop(self) -> int:
        return self.blocks[-1] + 1 if self.blocks else 0

    @property
    def is_prefix(self) -> bool:
        return self.blocks == tuple(range(self.stop))

    @property
    def prefix_stop(self) -> int:
        """The end of the frozen blocks' leading run: blocks [0, prefix_stop) are frozen, block prefix_stop is not (a
        window's frozen blocks after it sit after trained ones)."""
        stop = 0
        while stop in self.blocks:
            stop += 1
        return stop

    @property
    def prefix_blocks(self) -> tuple[int, ...]:
        """The frozen prefix: blocks [0, prefix_stop), what a cache may compute once (tune.training.prefix_cache)."""
        return tuple(range(self.prefix_stop))


@dataclass(frozen=True)
class FreezeSummary:
    frozen_blocks: tuple[int, ...]
    freeze_start: int
    freeze_stop: int
    frozen_params: int
    trainable_params: int
    frozen_flops_share: float  # share of one forward pass's FLOPs spent in frozen blocks
    adapter_params: int = 0  # LoRA adapters' parameters in the frozen blocks (adapter.py), among trainable_params

    @property
    def policy(self) -> Policy:
        """The hard freeze of the frozen blocks (a trial's own policy adds its window, decay, thaw and adapter:
        tune.training.policy)."""
        return Policy(frozen=self.frozen_blocks)

    @property
    def label(self) -> str:
        """``[start, stop)`` for a contiguous range (YOLOv5's ``--freeze N`` is ``[0, N)``), else the blocks."""
        return self.policy.freeze_range

    def as_metrics(self) -> dict[str, Any]:
        """The freeze as a trial reports it: its numbers, its label and ``policy_params``, the params of its run's
        policy (``tune.settings.policy.Policy.params``; a trial with a policy of its own reports that instead)."""
        return {"freeze_label": self.label, "freeze_start": self.freeze_start, "freeze_stop": self.freeze_stop,
                "frozen_params": self.frozen_params, "trainable_params": self.trainable_params,
                "frozen_flops_share": self.frozen_flops_share, "adapter_params": self.adapter_params,
                "policy_params": self.policy.params()}


def _describe(value: Any) -> str | None:
    if isinstance(value, bool):
        return "a bool is not a block index"
    if isinstance(value, float):
        return "a float is not a block index"
    return None


def resolve_index(key: str, value: Any, n_blocks: int, cut_points: Mapping[str, int], *, low: int = 0,
                  high: int | None = None) -> int:
    """One freeze bound (int or cut-point name) → a block count in [low, high] (default [0, n_blocks])."""
    high = n_blocks if high is None else high
    names = ", ".join(f"{name}={index}" for name, index in cut_points.items())
    allowed = f"an integer in [{low}, {high}] or a name ({names})"
    if isinstance(value, str):
        if value not in cut_points:
            raise ConfigError(key, value, allowed, problem="unknown name")
        index = cut_points[value]
    elif is_int(value):
        index = value
    else:
        raise ConfigError(key, value, allowed, problem=_describe(value) or type(value).__name__)
    if not low <= index <= high:
        raise ConfigError(key, value, allowed, problem="out of range")
    return index


def resolve(block_model: BlockModel, *, freeze: Any = None, freeze_start: Any = 0, freeze_stop: Any = None,
            train_start: Any = None, train_stop: Any = None) -> FreezeSpec:
    """The freeze keys of a trial → the frozen block indices; errors name the key, the value, what is allowed."""
    n_blocks = block_model.n_blocks
    cuts = block_model.named_cut_points()
    if train_start is not None or train_stop is not None:
        unset = freeze_start in (0, "none")  # its default: no freeze_start was given
        return _window(block_model, train_start, train_stop,
                       {"freeze": freeze, "freeze_start": None if unset else freeze_start, "freeze_stop": freeze_stop})
    if freeze is not None and freeze_stop is not None:
        raise ConfigError("freeze", freeze, "either freeze or freeze_start/freeze_stop, not both")
    if isinstance(freeze, (list, tuple)):
        for position, index in enumerate(freeze):
            if not is_int(index) or not 0 <= index < n_blocks:
                raise ConfigError(f"freeze[{position}]", index, f"a block index in [0, {n_blocks - 1}]",
                                  problem=_describe(index))
        blocks = tuple(sorted(set(freeze)))
        key, shown = "freeze", list(freeze)
    elif freeze is not None:
        blocks = tuple(range(resolve_index("freeze", freeze, n_blocks, cuts)))
        key, shown = "freeze", freeze
    else:
        start = resolve_index("freeze_start", freeze_start, n_blocks, cuts)
        stop = start if freeze_stop is None else resolve_index("freeze_stop", freeze_stop, n_blocks, cuts)
        if not in_order({"freeze_start": start, "freeze_stop": stop}):
            raise ConfigError("freeze_start", freeze_start, f"freeze_start <= freeze_stop (freeze_stop={freeze_stop})")
        blocks = tuple(range(start, stop))
        key, shown = "freeze_stop", freeze_stop
    counts = block_model.param_counts()
    trainable_blocks = [i for i in range(n_blocks) if i not in blocks and counts[i]]
    if not trainable_blocks:
        allowed = f"a freeze that leaves a block with parameters to train (a range stops at most at {n_blocks - 1})"
        raise ConfigError(key, shown, allowed, problem="freezes every block")
    return FreezeSpec(blocks)


def _window(block_model: BlockModel, train_start: Any, train_stop: Any, freeze: Mapping[str, Any]) -> FreezeSpec:
    """A trained window [train_start, train_stop): the head and the window train, blocks [0, a) and [b, head) freeze.
    ``freeze``: the other freeze keys, none of which may be given beside a window."""
    for key, value in freeze.items():
        if value is not None:
            raise ConfigError(key, value, "either a freeze (freeze, freeze_start/freeze_stop) or a trained window "
                              "(train_start/train_stop), not both")
    head, cuts = block_model.n_blocks - 1, block_model.named_cut_points()
    start = 0 if train_start is None else resolve_index("train_start", train_start, head, cuts, high=head - 1)
    stop = head if train_stop is None else resolve_index("train_stop", train_stop, head, cuts, low=1)
    if not in_order({"train_start": start, "train_stop": stop}):
        raise ConfigError("train_start", train_start, f"train_start < train_stop (train_stop={train_stop}): a window "
                          "trains at least one block besides the head", problem="an empty window")
    return FreezeSpec((*range(start), *range(stop, head)), window=(start, stop))


class FrozenModel:
    """A block model with a freeze applied. Call ``train_mode()`` instead of ``module.train()``."""

    def __init__(self, block_model: BlockModel, spec: FreezeSpec, frozen_bn: str = "eval",
                 frozen_dropout: str = "eval", adapters: Any = None) -> None:
        for key, value in (("frozen_bn", frozen_bn), ("frozen_dropout", frozen_dropout)):
            if value not in ("eval", "train"):
                raise ConfigError(key, value, "eval or train")
        self.block_model = block_model
        self.module = block_model.module
        self.spec = spec
        self.frozen_bn = frozen_bn
        self.frozen_dropout = frozen_dropout
        # what the model trains without a freeze (a model may hold parameters it never trains): a thaw restores it
        self._trainable = {id(p) for p in self.module.parameters() if p.requires_grad}
        self.thawed: set[int] = set()  # blocks of the freeze that have thawed (policy.py: gradual unfreezing)
        # LoRA adapters (tune.training.adapter) on frozen blocks: their base weights freeze, the adapters train, in
        # training mode (their dropout); a block with an adapter is not gradient-free (the frozen FLOP share leaves it
        # out)
        self.adapters = adapters
        adapter_params = {id(p) for p in adapters.params} if adapters else set()
        self._adapter_modules = {id(m) for m in adapters.modules} if adapters else set()
        for param in block_model.parameters_of(spec.blocks):
            param.requires_grad_(id(param) in adapter_params)
        self._frozen_eval = self._eval_modules()
        self._flops = block_flops(block_model)
        counts = block_model.param_counts()
        self.summary = FreezeSummary(
            frozen_blocks=spec.blocks,
            freeze_start=spec.start,
            freeze_stop=spec.stop,
            frozen_params=sum(counts[i] for i in spec.blocks) - (adapters.param_count if adapters else 0),
            trainable_params=sum(p.numel() for p in self.trainable_parameters()),
            frozen_flops_share=self.frozen_flops_share(),
            adapter_params=adapters.param_count if adapters else 0,
        )

    def _eval_modules(self) -> list[nn.Module]:
        """The frozen modules train_mode() puts in eval mode: BatchNorm unless frozen_bn is train, every other
        module unless frozen_dropout is train."""
        still = [block for block in self.spec.blocks if block not in self.thawed]
        return [m for m in self.block_model.modules_of(still) if id(m) not in self._adapter_modules
                and (self.frozen_bn if isinstance(m, nn.modules.batchnorm._BatchNorm) else self.frozen_dropout)
                == "eval"]

    def frozen_flops_share(self) -> float:
        """The share of one forward pass's FLOPs in blocks frozen now (thawed ones no longer count)."""
        total = sum(self._flops)
        adapted = set(self.adapters.blocks) if self.adapters else set()
        return sum(self._flops[i] for i in self.spec.blocks if i not in self.thawed | adapted) / total if total else 0.0

    def block_parameters(self, block: int) -> list[nn.Parameter]:
        """The parameters of ``block`` that train when it is not frozen (what an optimizer group of it holds)."""
        return [p for p in self.block_model.parameters_of([block]) if id(p) in self._trainable]

    def thaw(self, blocks: Iterable[int]) -> None:
        """Unfreeze ``blocks`` of the freeze: their parameters train again and their BatchNorm and dropout return to
        training mode in ``train_mode()``."""
        blocks = set(blocks) & set(self.spec.blocks)
        for block in blocks:
            for param in self.block_parameters(block):
                param.requires_grad_(True)
        self.thawed |= blocks
        self._frozen_eval = self._eval_modules()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def train_mode(self, module: nn.Module | None = None) -> None:
        """Training mode for the model (or ``module``, a view sharing its modules), the frozen part as configured."""
        (module or self.module).train()
        for frozen in self._frozen_eval:
            frozen.training = False  # this module alone: eval() would reach a frozen_bn "train" BatchNorm in it


def freeze_keys(train: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A trial's freeze keys for ``resolve``: its sampled ``params`` over the fixed values of ``train`` (a
    TrainConfig, where a list of blocks is a tuple)."""
    values = {key: (params or {}).get(key, getattr(train, key)) for key in FREEZE_KEYS}
    if isinstance(values["freeze"], tuple):
        values["freeze"] = list(values["freeze"])
    return values


def freeze_model(block_model: BlockModel, cfg: Any) -> FrozenModel:
    """Freeze ``block_model`` as the TrainConfig ``cfg`` says (its freeze keys, frozen_bn and frozen_dropout; with
    ``adapter: lora``, LoRA adapters on the frozen blocks: ``tune.training.adapter``)."""
    spec = resolve(block_model, **freeze_keys(cfg))
    adapters = None
    if getattr(cfg, "adapter", "none") == "lora" and spec.blocks:
        from tune.training import adapter

        block_model, adapters = adapter.inject(block_model, spec.blocks, cfg.lora_rank, cfg.lora_alpha,
                                               cfg.lora_dropout)
    return FrozenModel(block_model, spec, cfg.frozen_bn, cfg.frozen_dropout, adapters)


_SPACE_FREEZES = ("check_points", "check_space", "depth_points", "grid_values", "sampled_freezes", "trial_freeze",
                  "window_points")


def __getattr__(name: str) -> Any:
    """A space's freezes (``tune.training.space_freezes``) by their names here too."""
    if name in _SPACE_FREEZES:
        from tune.training import space_freezes

        return getattr(space_freezes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
