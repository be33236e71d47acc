"""Blocks, which of them to freeze, freezing them, and what it froze. Knows no task: tasks build a BlockModel.

Semantics (the YOLOv5 / Ultralytics ones, kept exactly):
- ``freeze: N`` freezes blocks [0, N): YOLOv5's ``--freeze 10`` freezes its backbone, blocks 0-9.
- ``freeze: [i, j, ...]`` freezes exactly those blocks.
- ``freeze_start: a, freeze_stop: b`` freezes [a, b), the searchable form; ``freeze_start`` defaults to 0.
- a name (``none``, ``backbone``, ``all_but_head``, or any cut point of the model) stands for its block count.

Frozen parameters get ``requires_grad=False`` and are left out of the optimizer. Frozen BatchNorm layers stay
in eval mode by default so their running statistics do not drift; ``frozen_bn="train"`` lets them update, as
YOLOv5's train.py does. The rest of the frozen blocks runs in eval mode too by default (no dropout, no stochastic
depth, no attention dropout: the frozen part is a fixed feature extractor); ``frozen_dropout="train"`` leaves it
in training mode as ``model.train()`` would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tune.errors import ConfigError
from tune.space import FREEZE_KEYS, IntRange, in_order, is_int, resolve_names

__all__ = ["FREEZE_KEYS", "BlockModel", "FreezeSpec", "FreezeSummary", "FrozenModel", "block_flops", "check_space",
           "freeze_keys", "freeze_model", "grid_values", "layer_table", "resolve", "resolve_index", "sampled_freezes",
           "trial_freeze"]


@dataclass(frozen=True, kw_only=True)
class BlockModel:
    """A model and its ordered blocks: freezing works on block indices.

    A block is a set of the model's parameters, given in one of two ways:
    - ``blocks``: submodules of ``module`` in forward order, one per block (a block holds their parameters);
    - ``param_blocks``: a map from every parameter name of ``module`` (``named_parameters()``) to its block index,
      so that parameters that live on the root or a shared container (a ViT's ``cls_token`` and ``pos_embed``)
      belong to the stem and freeze with it. ``tune.blocks`` derives it from a timm or torchvision model.
    Every parameter belongs to exactly one block. ``cut_points`` names block counts that mean something for this
    model, e.g. ``{"backbone": 6}``: freezing ``backbone`` freezes blocks [0, 6). ``none`` (0) and
    ``all_but_head`` (n_blocks - 1) are always defined. ``example_input`` is one small batch (a tensor, or a
    mapping of keyword tensors), used to measure each block's share of forward FLOPs. ``sequential`` (with
    ``blocks`` only) says that the forward pass is exactly the blocks applied in order (each block's output is
    the next one's input): only then can a frozen prefix's outputs be cached and the rest trained on them.
    """

    module: nn.Module
    block_names: Sequence[str]
    cut_points: Mapping[str, int]
    example_input: Any
    blocks: Sequence[nn.Module] = ()
    param_blocks: Mapping[str, int] = field(default_factory=dict)
    sequential: bool = False

    def __post_init__(self) -> None:
        if self.blocks and self.param_blocks:
            raise ValueError("give blocks or param_blocks, not both")
        if self.blocks and len(self.blocks) != len(self.block_names):
            raise ValueError(f"{len(self.blocks)} blocks but {len(self.block_names)} block names")
        if self.sequential and not self.blocks:
            raise ValueError("a sequential model gives its blocks as modules")
        if len(self.block_names) < 2:
            raise ValueError("a model needs at least two blocks (one to freeze, one to train)")
        names = [name for name, _ in self.module.named_parameters()]
        mapping = self._from_modules() if self.blocks else dict(self.param_blocks)
        unassigned = [name for name in names if name not in mapping]
        if unassigned:
            raise ValueError(f"{len(unassigned)} parameters belong to no block, e.g. {', '.join(unassigned[:3])}")
        wrong = [name for name, index in mapping.items() if not 0 <= index < len(self.block_names)]
        if wrong or set(mapping) - set(names):
            raise ValueError(f"param_blocks names a block index out of range or an unknown parameter: "
                             f"{', '.join((wrong or sorted(set(mapping) - set(names)))[:3])}")
        object.__setattr__(self, "param_blocks", {name: mapping[name] for name in names})

    def _from_modules(self) -> dict[str, int]:
        owner: dict[int, int] = {}
        for index, block in enumerate(self.blocks):
            for param in block.parameters():
                if owner.setdefault(id(param), index) != index:
                    raise ValueError(f"a parameter is in two blocks ({owner[id(param)]} and {index})")
        return {name: owner[id(p)] for name, p in self.module.named_parameters() if id(p) in owner}

    @property
    def n_blocks(self) -> int:
        return len(self.block_names)

    def named_cut_points(self) -> dict[str, int]:
        return {"none": 0, **self.cut_points, "all_but_head": self.n_blocks - 1}

    def parameters_of(self, blocks: Iterable[int]) -> list[nn.Parameter]:
        """The parameters of ``blocks``, in the model's order."""
        wanted = set(blocks)
        return [p for name, p in self.module.named_parameters() if self.param_blocks[name] in wanted]

    def param_counts(self) -> list[int]:
        counts = [0] * self.n_blocks
        for name, param in self.module.named_parameters():
            counts[self.param_blocks[name]] += param.numel()
        return counts

    @cached_property
    def roots(self) -> list[list[nn.Module]]:
        """Each block's top modules: its given module, or the largest submodules whose parameters all lie in it
        (a container whose forward never runs, a ModuleList, gives its entries instead). A submodule without
        parameters (an activation, a BatchNorm without affine weights, a dropout) inside a container split across
        blocks joins the block of the sibling with parameters before it (after it, if none is before). A block of
        root-level parameters alone has none."""
        if self.blocks:
            return [[block] for block in self.blocks]
        found: list[list[nn.Module]] = [[] for _ in range(self.n_blocks)]
        owner = {id(p): self.param_blocks[name] for name, p in self.module.named_parameters()}

        def add(index: int, module: nn.Module) -> None:
            if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                for child in module.children():
                    add(index, child)
            else:
                found[index].append(module)

        def visit(module: nn.Module) -> None:
            children = [(child, {owner[id(p)] for p in child.parameters()}) for child in module.children()]
            previous = next((next(iter(owners)) for _, owners in children if len(owners) == 1), None)
            for child, owners in children:
                if len(owners) == 1:
                    previous = next(iter(owners))
                    add(previous, child)
                elif owners:
                    visit(child)
                elif previous is not None:
                    add(previous, child)

        visit(self.module)
        return found

    def modules_of(self, blocks: Iterable[int]) -> list[nn.Module]:
        """Every module inside the top modules of ``blocks`` (BatchNorm and dropout in a frozen part)."""
        return [m for index in blocks for root in self.roots[index] for m in root.modules()]

    def forward_example(self) -> Any:
        example = self.example_input
        return self.module(**example) if isinstance(example, Mapping) else self.module(example)


@dataclass(frozen=True)
class FreezeSpec:
    blocks: tuple[int, ...]  # sorted, unique block indices to freeze

    @property
    def start(self) -> int:
        return self.blocks[0] if self.blocks else 0

    @property
    def stop(self) -> int:
        return self.blocks[-1] + 1 if self.blocks else 0

    @property
    def is_prefix(self) -> bool:
        return self.blocks == tuple(range(self.stop))


@dataclass(frozen=True)
class FreezeSummary:
    frozen_blocks: tuple[int, ...]
    freeze_start: int
    freeze_stop: int
    frozen_params: int
    trainable_params: int
    frozen_flops_share: float  # share of one forward pass's FLOPs spent in frozen blocks

    @property
    def label(self) -> str:
        """``[start, stop)`` for a contiguous range (YOLOv5's ``--freeze N`` is ``[0, N)``), else the blocks."""
        if self.frozen_blocks == tuple(range(self.freeze_start, self.freeze_stop)):
            return f"[{self.freeze_start}, {self.freeze_stop})"
        return "{" + ", ".join(str(i) for i in self.frozen_blocks) + "}"

    def as_metrics(self) -> dict[str, Any]:
        return {"freeze_label": self.label, "freeze_start": self.freeze_start, "freeze_stop": self.freeze_stop,
                "frozen_params": self.frozen_params, "trainable_params": self.trainable_params,
                "frozen_flops_share": self.frozen_flops_share}


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


def resolve(block_model: BlockModel, *, freeze: Any = None, freeze_start: Any = 0, freeze_stop: Any = None
            ) -> FreezeSpec:
    """The freeze keys of a trial → the frozen block indices; errors name the key, the value, what is allowed."""
    n_blocks = block_model.n_blocks
    cuts = block_model.named_cut_points()
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


def block_flops(block_model: BlockModel) -> list[int]:
    """Forward FLOPs of each block on the model's example input, counted by torch's FlopCounterMode: what runs
    inside a block's top modules is that block's (a top module called inside another's, e.g. a shared one, counts
    for its own block only)."""
    counts = [0] * block_model.n_blocks
    counter = FlopCounterMode(display=False)
    open_roots: list[list[int]] = []  # [block, total FLOPs when it started, FLOPs of roots run inside it]
    handles = []

    def enter(index: int):
        def hook(module: nn.Module, args: Any) -> None:
            open_roots.append([index, counter.get_total_flops(), 0])
        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        index, started, inner = open_roots.pop()
        spent = counter.get_total_flops() - started
        counts[index] += spent - inner
        if open_roots:
            open_roots[-1][2] += spent

    for index, roots in enumerate(block_model.roots):
        for root in roots:
            handles.append(root.register_forward_pre_hook(enter(index)))
            handles.append(root.register_forward_hook(leave))
    was_training = block_model.module.training
    try:
        block_model.module.eval()
        with torch.no_grad(), counter:
            block_model.forward_example()
    finally:
        for handle in handles:
            handle.remove()
        block_model.module.train(was_training)
    return counts


def layer_table(block_model: BlockModel) -> str:
    """The ordered blocks (index, name, type, parameters, share of forward FLOPs, cumulative share) with a rule
    under each named cut point: which ``freeze: N`` freezes what."""
    flops = block_flops(block_model)
    total = sum(flops) or 1
    cuts: dict[int, list[str]] = {}
    for name, index in block_model.named_cut_points().items():
        cuts.setdefault(index, []).append(name)
    width = max(len(str(name)) for name in block_model.block_names)
    kinds = [_kind(block_model, index) for index in range(block_model.n_blocks)]
    kind_width = max(16, *map(len, kinds))
    lines = [f"{'block':>5}  {'name':<{width}}  {'type':<{kind_width}} {'params':>11}  {'flops':>6}  {'cum.':>6}"]
    done = 0
    params = block_model.param_counts()
    for index, name in enumerate(block_model.block_names):
        if index in cuts:
            lines.append(f"{'':>5}  --- freeze: {index} ({', '.join(cuts[index])}) freezes the blocks above ---")
        done += flops[index]
        lines.append(f"{index:>5}  {name:<{width}}  {kinds[index]:<{kind_width}} {params[index]:>11,}  "
                     f"{flops[index] / total:>6.1%}  {done / total:>6.1%}")
    example = block_model.example_input
    shape = ({key: tuple(value.shape) for key, value in example.items()} if isinstance(example, Mapping)
             else tuple(example.shape))
    lines.append(f"{block_model.n_blocks} blocks, {sum(params):,} parameters; FLOPs of one forward pass on an input "
                 f"of shape {shape}.")
    return "\n".join(lines)


def _kind(block_model: BlockModel, index: int) -> str:
    """A block's type: its module's class, or how many modules (and root-level parameters) it gathers."""
    roots = [root for root in block_model.roots[index] if any(True for _ in root.parameters())]
    own = sum(p.numel() for p in block_model.parameters_of([index])) - sum(_count(r.parameters()) for r in roots)
    kind = type(roots[0]).__name__ if len(roots) == 1 else f"{len(roots)} modules" if roots else ""
    return f"{kind} + params" if own and kind else kind or "params"


def _count(params: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


class FrozenModel:
    """A block model with a freeze applied. Call ``train_mode()`` instead of ``module.train()``."""

    def __init__(self, block_model: BlockModel, spec: FreezeSpec, frozen_bn: str = "eval",
                 frozen_dropout: str = "eval") -> None:
        for key, value in (("frozen_bn", frozen_bn), ("frozen_dropout", frozen_dropout)):
            if value not in ("eval", "train"):
                raise ConfigError(key, value, "eval or train")
        self.block_model = block_model
        self.module = block_model.module
        self.spec = spec
        self.frozen_bn = frozen_bn
        self.frozen_dropout = frozen_dropout
        for param in block_model.parameters_of(spec.blocks):
            param.requires_grad_(False)
        # The frozen modules train_mode() puts in eval mode: BatchNorm unless frozen_bn is train, every other
        # module unless frozen_dropout is train.
        self._frozen_eval = [m for m in block_model.modules_of(spec.blocks)
                             if (frozen_bn if isinstance(m, nn.modules.batchnorm._BatchNorm) else frozen_dropout)
                             == "eval"]
        flops = block_flops(block_model)
        total_flops = sum(flops)
        counts = block_model.param_counts()
        self.summary = FreezeSummary(
            frozen_blocks=spec.blocks,
            freeze_start=spec.start,
            freeze_stop=spec.stop,
            frozen_params=sum(counts[i] for i in spec.blocks),
            trainable_params=_count(p for p in self.module.parameters() if p.requires_grad),
            frozen_flops_share=sum(flops[i] for i in spec.blocks) / total_flops if total_flops else 0.0,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def train_mode(self, module: nn.Module | None = None) -> None:
        """Training mode for the model (or ``module``, a view sharing its modules), the frozen part as configured."""
        (module or self.module).train()
        for frozen in self._frozen_eval:
            frozen.training = False  # this module alone: eval() would reach a frozen_bn "train" BatchNorm in it


def check_space(space: Mapping[str, Any], train: Any, block_model: BlockModel) -> dict[str, Any]:
    """Resolve cut-point names in the freeze dimensions of ``space`` and check every freeze it can sample.

    ``train`` is the TrainConfig holding the fixed values. Raises ConfigError before any trial starts.
    """
    n_blocks, cuts = block_model.n_blocks, block_model.named_cut_points()
    resolved = {key: resolve_names(f"space.{key}", dim, lambda k, v: resolve_index(k, v, n_blocks, cuts))
                if key in FREEZE_KEYS else dim for key, dim in space.items()}
    for combo, values in _freeze_values(resolved, train):
        try:
            resolve(block_model, **values)
        except ConfigError as err:
            key = err.key.split("[")[0]
            where = f"space.{key}" if key in combo else f"train.{key}"
            raise ConfigError(where, values[key], err.allowed, problem=err.problem) from None
    return resolved


def sampled_freezes(space: Mapping[str, Any], train: Any, block_model: BlockModel) -> dict[tuple[int, ...], dict]:
    """Every distinct set of frozen blocks a checked space (``check_space``'s result) can sample, with the freeze
    keys that give it."""
    found: dict[tuple[int, ...], dict] = {}
    for _, values in _freeze_values(space, train):
        found.setdefault(resolve(block_model, **values).blocks, values)
    return found


def freeze_keys(train: Any, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A trial's freeze keys for ``resolve``: its sampled ``params`` over the fixed values of ``train`` (a
    TrainConfig, where a list of blocks is a tuple)."""
    values = {key: (params or {}).get(key, getattr(train, key)) for key in FREEZE_KEYS}
    if isinstance(values["freeze"], tuple):
        values["freeze"] = list(values["freeze"])
    return values


def freeze_model(block_model: BlockModel, cfg: Any) -> FrozenModel:
    """Freeze ``block_model`` as the TrainConfig ``cfg`` says (its freeze keys, frozen_bn and frozen_dropout)."""
    return FrozenModel(block_model, resolve(block_model, **freeze_keys(cfg)), cfg.frozen_bn, cfg.frozen_dropout)


def trial_freeze(params: Mapping[str, Any], train: Any, block_model: BlockModel) -> tuple[int, ...]:
    """The frozen blocks of a trial: its sampled params over the fixed values of ``train``."""
    return resolve(block_model, **freeze_keys(train, params)).blocks


def _freeze_values(space: Mapping[str, Any], train: Any) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    """(the searched freeze values, all freeze keys) for every combination the space can sample."""
    fixed = freeze_keys(train)
    candidates = {key: _values(space[key]) for key in fixed if key in space}
    for combo in _combinations(candidates):
        if not in_order(combo):
            continue  # never sampled: the upper bound's floor is the sampled lower one (space.OptunaSpace)
        yield combo, {**fixed, **combo}


def grid_values(dim: Any) -> list[Any]:
    """Every value of a choice or int dimension (names already resolved), for search.algorithm: grid."""
    return _values(dim)


def _values(dim: Any) -> list[Any]:
    if isinstance(dim, IntRange):
        return list(range(int(dim.low), int(dim.high) + 1, dim.step))
    return list(dim.values)


def _combinations(candidates: Mapping[str, list[Any]]) -> Iterable[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for key, values in candidates.items():
        combos = [{**combo, key: value} for combo in combos for value in values]
    return combos
