"""Blocks: the block vocabulary every model is given in (``BlockModel``), the builders that read blocks off a model's
own description, and what each block costs (``block_flops``, the layers table ``layer_table``). Knows no task: tasks
build a BlockModel, ``tune.training.freeze`` freezes some of its blocks.

The builders give a map from parameter name to block (``BlockModel.param_blocks``):
- timm: the model's ``group_matcher(coarse=True)``, the grouping timm itself uses for layer-wise learning-rate
  decay (``timm.models.group_parameters``): the stem (a ViT's ``cls_token``, ``pos_embed`` and ``patch_embed``
  with it), each stage or block, then what it leaves unmatched (the head) last. Named cut points: ``stem``, the
  end of each stage from ``feature_info`` (its module names: ``layer2``, ``stages.1``, ``blocks.11``; the last
  one per feature stride), and ``backbone``, everything before the head.
- torchvision classification models, from their module layout: a ResNet's ``conv1`` / ``bn1`` are the stem, then
  ``layer1``-``layer4``, then ``fc``; the ``features.N`` of VGG, MobileNet, EfficientNet, ConvNeXt and Swin are
  one block each; the encoder layers of a ViT (``encoder.layers.N``), with its ``class_token`` and position
  embedding in the stem; the classifier is the head. Cut points ``stem`` and ``backbone``.
- Hugging Face encoder classifiers (``encoder_blocks``): the embeddings, each layer, the head.
``from_param_groups`` builds a BlockModel from any such grouping (the Hugging Face encoders use it too).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["BlockModel", "block_flops", "encoder_blocks", "from_param_groups", "layer_table", "timm_blocks",
           "torchvision_blocks"]


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


def from_param_groups(module: nn.Module, groups: Sequence[tuple[str, Sequence[str]]], example_input: Any,
                      cut_points: Mapping[str, int] | None = None, first: str = "stem") -> BlockModel:
    """A BlockModel from ordered (block name, parameter names) groups; ``first`` (1: the first group, ``stem``
    unless told) and ``backbone`` (everything before the last group, the head) are named cut points beside
    ``cut_points``."""
    mapping = {name: index for index, (_, names) in enumerate(groups) for name in names}
    cuts = {first: 1, **(cut_points or {}), "backbone": len(groups) - 1}
    return BlockModel(module=module, param_blocks=mapping, block_names=[name for name, _ in groups],
                      cut_points=cuts, example_input=example_input)


def _group_name(names: Sequence[str]) -> str:
    """The dotted prefix the parameters share (``layer1``, ``blocks.3``), else their top-level names joined."""
    prefix = os.path.commonprefix([name.split(".")[:-1] for name in names])
    if prefix:
        return ".".join(prefix)
    return "+".join(dict.fromkeys(name.split(".")[0] for name in names))


def _matched(names: Sequence[str], matcher: Any) -> str:
    """What timm's matcher regexes matched of each name (``layer1``, ``blocks.11``, ``norm``), joined; a matcher
    that is a function (timm's inception_v3) names nothing: the names' shared prefix then."""
    if not isinstance(matcher, Mapping):
        return _group_name(names)
    specs = [spec for value in matcher.values() if value is not None
             for spec in (value if isinstance(value, (list, tuple)) else [(value, None)])]
    found = [next((m.group(0) for pattern, _ in specs if (m := re.match(pattern, name))), "") for name in names]
    return "+".join(dict.fromkeys(text.rstrip(".") for text in found if text)) or _group_name(names)


def timm_blocks(model: nn.Module, example_input: Any) -> BlockModel:
    """A timm model's blocks from its own ``group_matcher(coarse=True)`` (see the module's docstring)."""
    from timm.models import group_parameters

    matcher = model.group_matcher(coarse=True)
    by_group = group_parameters(model, matcher)
    groups = [(_matched(by_group[g], matcher), list(by_group[g])) for g in sorted(by_group)]
    groups[0] = ("stem", groups[0][1])
    groups[-1] = ("head", groups[-1][1])
    block_of = {name: index for index, (_, names) in enumerate(groups) for name in names}
    stage_ends: dict[Any, tuple[str, int]] = {}
    for info in getattr(model, "feature_info", None) or []:
        inside = [block_of[name] for name in block_of if name.startswith(f"{info['module']}.")]
        if inside and 1 < max(inside) + 1 < len(groups):
            stage_ends[info.get("reduction")] = (info["module"], max(inside) + 1)  # the last one per stride
    return from_param_groups(model, groups, example_input, dict(stage_ends.values()))


_EXPANDED = ("features", "trunk_output", "layers", "blocks")  # containers whose entries are one block each


def torchvision_blocks(model: nn.Module, example_input: Any) -> BlockModel:
    """A torchvision classification model's blocks from its module layout (see the module's docstring)."""
    stem = [name for name, _ in model.named_parameters(recurse=False)]
    groups: list[tuple[str, list[str]]] = []

    def params(module: nn.Module, path: str) -> list[str]:
        return [f"{path}.{name}" for name, _ in module.named_parameters()]

    def walk(module: nn.Module, prefix: str, top: bool) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if not params(child, path):
                continue
            if name in _EXPANDED and isinstance(child, (nn.Sequential, nn.ModuleList)):
                walk(child, f"{path}.", top=False)
            elif any(n in _EXPANDED for n, _ in child.named_children()):  # e.g. a ViT's encoder: its layers
                stem.extend(f"{path}.{n}" for n, _ in child.named_parameters(recurse=False))
                walk(child, f"{path}.", top=False)
            elif top and not groups and not list(child.children()):
                stem.extend(params(child, path))  # leading single layers of the root (conv1, bn1): the stem
            elif isinstance(child, nn.modules.batchnorm._BatchNorm) and (groups or stem):
                (groups[-1][1] if groups else stem).extend(params(child, path))  # a BatchNorm goes with its conv
            else:
                groups.append((path, params(child, path)))

    walk(model, "", top=True)
    if stem:
        groups.insert(0, ("stem", stem))
    return from_param_groups(model, groups, example_input)


def encoder_blocks(model: nn.Module, example_input: Any) -> BlockModel:
    """A Hugging Face encoder classifier's blocks from its own structure: its base model (``base_model``) holds a
    list of layers (the largest ModuleList in it: ``bert.encoder.layer``, ``distilbert.transformer.layer``, ...);
    what the base holds before or beside that list (word and position embeddings, their norm, DeBERTa's relative
    position table) is the ``embeddings`` block, each layer a block, and what comes after the list or outside the
    base (a pooler, ``pre_classifier``, the classifier) the head. Cut points ``embeddings`` and ``backbone``."""
    base = getattr(model, "base_model", model)
    prefix = next((f"{name}." for name, module in model.named_modules() if module is base and name), "")
    lists = [(name, module) for name, module in base.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of layers to freeze")
    list_name, layers = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    container = list_name.rpartition(".")[0]  # e.g. encoder: its other parameters go with the embeddings
    children = [name for name, _ in base.named_children()]
    holder = container.split(".")[0] if container else list_name.split(".")[0]
    before = set(children[:children.index(holder)]) | {holder}
    groups: list[tuple[str, list[str]]] = [("embeddings", [])]
    groups += [(f"{prefix}{list_name}.{i}", []) for i in range(len(layers))]
    groups.append(("head", []))
    for name, _ in model.named_parameters():
        local = name[len(prefix):] if name.startswith(prefix) else None
        if local is not None and local.startswith(f"{list_name}."):
            groups[1 + int(local[len(list_name) + 1:].split(".")[0])][1].append(name)
        elif local is not None and local.split(".")[0] in before:
            groups[0][1].append(name)
        else:
            groups[-1][1].append(name)
    return from_param_groups(model, groups, example_input, first="embeddings")


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
