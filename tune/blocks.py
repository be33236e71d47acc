"""Blocks read from a model's own description, as maps from parameter name to block (``BlockModel.param_blocks``).

- timm: the model's ``group_matcher(coarse=True)``, the grouping timm itself uses for layer-wise learning-rate
  decay (``timm.models.group_parameters``): the stem (a ViT's ``cls_token``, ``pos_embed`` and ``patch_embed``
  with it), each stage or block, then what it leaves unmatched (the head) last. Named cut points: ``stem``, the
  end of each stage from ``feature_info`` (its module names: ``layer2``, ``stages.1``, ``blocks.11``; the last
  one per feature stride), and ``backbone``, everything before the head.
- torchvision classification models, from their module layout: a ResNet's ``conv1`` / ``bn1`` are the stem, then
  ``layer1``-``layer4``, then ``fc``; the ``features.N`` of VGG, MobileNet, EfficientNet, ConvNeXt and Swin are
  one block each; the encoder layers of a ViT (``encoder.layers.N``), with its ``class_token`` and position
  embedding in the stem; the classifier is the head. Cut points ``stem`` and ``backbone``.
``from_param_groups`` builds a BlockModel from any such grouping (the Hugging Face encoders use it too).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tune.freeze import BlockModel

__all__ = ["from_param_groups", "timm_blocks", "torchvision_blocks"]


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
