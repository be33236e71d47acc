"""LoRA adapters on a trial's frozen blocks (``train.adapter: lora``), through Hugging Face PEFT. Pure torch + peft.

With ``adapter: lora`` the trial's frozen range (its freeze keys) names the blocks that get adapters: their base
weights stay frozen, and a low-rank adapter (rank ``lora_rank``, scale ``lora_alpha / lora_rank``, dropout
``lora_dropout`` on its input) trains beside every ``nn.Linear`` and ``nn.Conv2d`` module inside them; the blocks
outside the range and the head train as with ``adapter: none``. A convolution with groups (a depthwise one) gets no
adapter, as PEFT cannot merge one: it stays frozen. The modules are named by their full names, read off the
model's blocks (``tune.blocks.BlockModel``), and given to PEFT as one exact pattern: no name is guessed.

``inject`` builds the adapters (PEFT's ``inject_adapter_in_model``) and gives the block model its new parameter
names (a wrapped layer's weight becomes ``<name>.base_layer.weight`` beside ``<name>.lora_A.default.weight``,
both in the wrapped layer's block). ``merged`` rebuilds a checkpoint's adapters on a fresh model, loads the weights
and folds the adapters into the base weights (PEFT's ``merge_and_unload``): the model comes back with its own
architecture and parameter names, a plain torch module. peft is imported here only, and only when adapters are
asked for: a search without them runs without peft installed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tune.errors import ConfigError
from tune.settings.space import ADAPTER_KEYS

if TYPE_CHECKING:  # torch only where adapters are built
    from torch import nn

    from tune.blocks import BlockModel

__all__ = ["ADAPTER_KEYS", "Adapters", "can_adapt", "check", "inject", "merged", "targets"]

_ADAPTER_NAME = "default"  # PEFT's name for a model's one adapter


@dataclass(frozen=True)
class Adapters:
    """The adapters of a trial: the modules that carry one (``targets``, full names), the blocks they are in, the
    adapter's settings, its trainable parameters and its modules (the adapter's dropout trains in a frozen block)."""

    targets: tuple[str, ...]
    blocks: tuple[int, ...]
    rank: int
    alpha: float
    dropout: float
    params: tuple[nn.Parameter, ...]
    modules: tuple[nn.Module, ...]

    @property
    def param_count(self) -> int:
        return sum(p.numel() for p in self.params)

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the adapters on a fresh model (``merged``): plain values only."""
        return {"targets": list(self.targets), "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout}


def _adaptable(module: nn.Module) -> bool:
    from torch import nn

    return type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1)


def targets(block_model: BlockModel, blocks: Iterable[int]) -> list[str]:
    """The full names of the ``nn.Linear`` and ``nn.Conv2d`` (groups 1) modules inside ``blocks``, in the model's
    order: what gets an adapter. A module shared with a block outside them is left out (its weight is not theirs)."""
    wanted = set(blocks)
    inside = {id(m) for m in block_model.modules_of(sorted(wanted))}
    block_of = block_model.param_blocks
    found = []
    for name, module in block_model.module.named_modules():
        if id(module) in inside and _adaptable(module) and block_of.get(f"{name}.weight") in wanted:
            found.append(name)
    return found


def can_adapt(block_model: BlockModel, blocks: Sequence[int]) -> bool:
    return bool(targets(block_model, blocks))


def _config(names: Sequence[str], rank: int, alpha: float, dropout: float) -> Any:
    from peft import LoraConfig

    # one pattern that matches exactly these full names (PEFT matches a string target against the whole name)
    pattern = "|".join(re.escape(name) for name in names)
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=f"(?:{pattern})", bias="none")


def _wrap(module: nn.Module, names: Sequence[str], rank: int, alpha: float, dropout: float) -> Any:
    """PEFT's LoRA tuner over ``module``, its adapters injected in place; every parameter keeps the ``requires_grad``
    it had (PEFT would leave only the adapters trainable, across the whole model)."""
    from peft import LoraModel

    before = {id(p): p.requires_grad for p in module.parameters()}
    tuner = LoraModel(module, _config(names, rank, alpha, dropout), _ADAPTER_NAME)
    for name, param in module.named_parameters():
        param.requires_grad_(before.get(id(param), True) if "lora_" not in name else True)
    return tuner


def _lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def inject(block_model: BlockModel, blocks: Sequence[int], rank: int, alpha: float, dropout: float
           ) -> tuple[BlockModel, Adapters]:
    """LoRA adapters on the Linear and Conv2d modules of ``blocks`` (``targets``), in place; the block model with the
    new parameter names (each adapter in its layer's block), and the adapters. Raises ValueError where the blocks
    hold no such module."""
    names = targets(block_model, blocks)
    if not names:
        raise ValueError(f"blocks {list(blocks)} hold no Linear or Conv2d module to adapt")
    module = block_model.module
    old_blocks = dict(block_model.param_blocks)
    _wrap(module, names, rank, alpha, dropout)
    layers = _lora_layers(module)
    mapping = {}
    for name, _ in module.named_parameters():
        owner = max((layer for layer in layers if name.startswith(f"{layer}.")), key=len, default=None)
        # a wrapped layer's own weights lie under base_layer; its adapter's go to the layer's block
        mapping[name] = old_blocks[name.replace(".base_layer.", ".")] if ".base_layer." in name or owner is None \
            else old_blocks[f"{owner}.weight"]
    # a model given as block modules finds its (new) parameters inside them again; a name map is given anew
    adapted = dataclasses.replace(block_model, param_blocks={} if block_model.blocks else mapping)
    params = tuple(p for name, p in module.named_parameters() if "lora_" in name)
    modules = tuple(m for layer in layers.values() for attr in ("lora_A", "lora_B", "lora_dropout")
                    for m in getattr(layer, attr).modules())
    adapters = Adapters(targets=tuple(names), blocks=tuple(sorted({mapping[f"{n}.base_layer.weight"] for n in names})),
                        rank=rank, alpha=float(alpha), dropout=float(dropout), params=params, modules=modules)
    return adapted, adapters


def merged(block_model: BlockModel, weights: Mapping[str, Any], state: Mapping[str, Any]) -> BlockModel:
    """A fresh task model (``block_model``) with a LoRA trial's checkpoint: its adapters rebuilt from ``state``
    (``Adapters.state``), ``weights`` loaded, the adapters merged into the base weights and unloaded. The model has
    its own architecture and parameter names again, and computes what the adapted one did."""
    module = block_model.module
    tuner = _wrap(module, state["targets"], int(state["rank"]), float(state["alpha"]), float(state["dropout"]))
    module.load_state_dict(weights)
    tuner.merge_and_unload()
    module.__dict__.pop("peft_config", None)  # PEFT's note on the module: the merged model needs no peft to load
    return block_model


def check(cfg: Any, task: Any, block_model: BlockModel, freezes: Mapping[tuple[int, ...], Any]) -> None:
    """Before any trial: where a trial can have ``adapter: lora`` (``cfg``, the checked Config), the task trains with
    the built-in trial, peft is installed, and every frozen range the space can sample (``freezes``,
    ``space_freezes.sampled_freezes``) holds a module to adapt. One ConfigError naming the key otherwise."""
    dim = cfg.space.get("adapter")
    if not (cfg.train.adapter == "lora" or "lora" in getattr(dim, "values", ())):
        return
    key = "space.adapter" if dim is not None else cfg.train_key("adapter")
    if task.make_trial is not None:
        raise ConfigError(key, "lora", f"none with the {task.name} task (its own trainer trains the model; LoRA "
                                       "adapters need the built-in trial)")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(key, "lora", "none, or install peft: pip install 'freeze-depth-search[lora]'",
                          problem="peft is not installed") from None
    for blocks in freezes:
        if blocks and not can_adapt(block_model, blocks):
            shown = block_model.block_names
            raise ConfigError(key, "lora", "none for this model: the frozen blocks "
                              f"{', '.join(str(shown[i]) for i in blocks)} hold no Linear or Conv2d module to adapt")
