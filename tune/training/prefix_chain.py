"""The frozen chain of a model that is not a plain sequence of blocks, replayed from its cached hidden states.

A Hugging Face encoder runs embeddings, then layers that a loop in the model's forward calls with the attention
mask: its frozen prefix cannot be cut off as a module of its own. ``Chain.find`` sees, in one forward pass, which
frozen modules form a chain (the first takes the raw inputs, each next one the previous one's hidden states) or
why they do not; ``Chain.outputs`` computes the chain's last hidden states; ``Chain.view`` is the model with the
chain replaced (``graft``) by a ``Replay`` of them and pass-throughs. ``tune.training.prefix_cache`` decides when to use
it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from tune.training.freeze import FrozenModel

__all__ = ["HIDDEN", "Chain", "PassThrough", "Replay", "WithHidden", "graft"]


# A frozen prefix of a model that is not a plain sequence (a Hugging Face encoder: embeddings, then layers that a
# loop in the model's forward calls with the attention mask). Its frozen modules that form a chain (the first
# takes the raw inputs, each next one the previous one's hidden states) are swapped, in a view of the model that
# shares every parameter, for a Replay of the last one's cached outputs and pass-throughs; the rest of the forward
# (the attention mask, the trainable layers, the head) runs as it always does, on the batch's own inputs.

HIDDEN = "prefix_hidden"  # the key of a sample's cached hidden states, beside its own inputs


def _first_tensor(args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    """What a module was given as its hidden states: its first tensor argument, positional or keyword."""
    return next((v for v in (*args, *kwargs.values()) if torch.is_tensor(v)), None)


def _hidden(output: Any) -> torch.Tensor | None:
    """The hidden states in a module's output: the tensor, or the first element of a tuple."""
    if isinstance(output, tuple) and output:
        output = output[0]
    return output if torch.is_tensor(output) else None


def _form(output: Any) -> int | None:
    """How a module returns its hidden states: -1 bare, k >= 0 as a tuple (hidden, None * k); None otherwise."""
    if torch.is_tensor(output):
        return -1
    if isinstance(output, tuple) and output and torch.is_tensor(output[0]) and all(v is None for v in output[1:]):
        return len(output) - 1
    return None


class _Returns(nn.Module):
    def __init__(self, form: int) -> None:
        super().__init__()
        self.form = form

    def give(self, hidden: torch.Tensor) -> Any:
        return hidden if self.form < 0 else (hidden, *([None] * self.form))


class Replay(_Returns):
    """Stands for the chain's first module: gives the current batch's cached hidden states (set by ``take``)."""

    def __init__(self, form: int) -> None:
        super().__init__(form)
        self.current: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.give(self.current)

    def take(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch without its cached hidden states, which the next forward gives."""
        rest = dict(batch)
        self.current = rest.pop(HIDDEN)
        return rest

    def feeding(self, batches: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            yield self.take(batch)


class PassThrough(_Returns):
    """Stands for a frozen module of the chain after the first: returns the hidden states it is given."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.give(_first_tensor(args, kwargs))


class WithHidden(torch.utils.data.Dataset):
    """A dataset of mapping samples, each with its cached hidden states under ``HIDDEN``."""

    def __init__(self, dataset: Any, hidden: torch.Tensor) -> None:
        self.dataset, self.hidden = dataset, hidden

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], HIDDEN: self.hidden[index]}


def graft(model: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """A view of ``model`` with the submodules at the dotted paths of ``replacements`` replaced: the modules on
    the paths to them are shallow copies with their own tables of children; every parameter, buffer and other
    module is the model's own (training the view trains the model)."""
    copies: dict[str, nn.Module] = {}

    def copy_of(path: str) -> nn.Module:
        if path not in copies:
            original = model.get_submodule(path) if path else model
            clone = copy.copy(original)
            clone._modules = dict(original._modules)
            copies[path] = clone
            if path:
                parent, _, name = path.rpartition(".")
                copy_of(parent)._modules[name] = clone
        return copies[path]

    for path, module in replacements.items():
        parent, _, name = path.rpartition(".")
        copy_of(parent)._modules[name] = module
    return copy_of("")


# Tensor methods that read what a tensor is, not what it holds: a cached tensor answers them the same.
_METADATA = {"size", "dim", "ndimension", "numel", "__len__", "__get__", "is_floating_point", "is_complex",
             "element_size", "is_contiguous", "get_device"}


class _Uses(TorchFunctionMode):
    """Records, during a forward pass, which frozen module's hidden states each torch operation reads and which
    frozen module was running it (None: none of them), ``seen`` as (producer, user) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.running: list[nn.Module] = []
        self.outputs: dict[int, nn.Module] = {}  # id of a frozen module's hidden states (alive) -> the module
        self.seen: set[tuple[nn.Module, nn.Module | None]] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.outputs and getattr(func, "__name__", "") not in _METADATA:
            user = self.running[-1] if self.running else None
            for value in (*args, *kwargs.values()):
                producer = self.outputs.get(id(value)) if torch.is_tensor(value) else None
                if producer is not None and producer is not user:
                    self.seen.add((producer, user))
        return func(*args, **kwargs)


def _index(modules: list[nn.Module], module: nn.Module) -> int:
    return next((i for i, m in enumerate(modules) if m is module), -1)


class _Stop(Exception):
    """Ends a forward pass once the chain's last module has run (the rest is not needed)."""


@dataclass
class Chain:
    """The chain of a frozen prefix: its modules' paths, in order, how each returns its hidden states, and the
    bytes of one sample's cached hidden states (what the cache holds per sample)."""

    paths: list[str]
    forms: list[int]
    sample_bytes: int

    @staticmethod
    def find(frozen: FrozenModel, run: Callable[[nn.Module], Any]) -> Chain | str:
        """The chain of ``frozen``'s prefix, seen in one forward pass (``run(model)``), or why there is none: a
        frozen module off the chain that is not the first block's, a chain that is not a chain (its hidden states
        used anywhere but by the next module of the chain, beyond their last), an output that depends on
        trainable parameters, or a module that returns more than its hidden states."""
        block_model = frozen.block_model
        names = {id(m): name for name, m in block_model.module.named_modules()}
        prefix = frozen.spec.prefix_blocks  # the frozen blocks after a trained one are not the chain's
        roots = [(index, root) for index in prefix for root in block_model.roots[index]]
        owner = {id(root): index for index, root in roots}
        calls: list[tuple[nn.Module, torch.Tensor | None, Any]] = []
        uses = _Uses()

        def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
            uses.running.append(module)

        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            uses.running.pop()
            calls.append((module, _first_tensor(args, kwargs), output))
            hidden = _hidden(output)
            if hidden is not None:
                uses.outputs[id(hidden)] = module

        handles = [h for _, root in roots for h in (root.register_forward_pre_hook(enter, with_kwargs=True),
                                                    root.register_forward_hook(record, with_kwargs=True))]
        try:
            frozen.train_mode()
            with uses:
                run(block_model.module)
        finally:
            for handle in handles:
                handle.remove()
        if not calls or owner[id(calls[0][0])] != prefix[0]:
            return "the frozen prefix's first module does not run first"
        chain, hidden = [calls[0]], _hidden(calls[0][2])
        for call in calls[1:]:
            if hidden is not None and call[1] is hidden:
                chain.append(call)
                hidden = _hidden(call[2])
        on_chain = [module for module, _, _ in chain]
        for producer, user in uses.seen:
            place = _index(on_chain, producer)
            if 0 <= place < len(on_chain) - 1 and (user is None or place + 1 != _index(on_chain, user)):
                where = names[id(user)] if user is not None else "the model's own forward"
                return f"{where} uses the hidden states of frozen {names[id(producer)]}, which the cache does not keep"
        off = [names[id(m)] for m, _, _ in calls if m not in on_chain and owner[id(m)] != prefix[0]]
        if off:
            return f"frozen {off[0]} does not take the hidden states of the frozen modules before it"
        if hidden is None:
            return f"{names[id(chain[-1][0])]} returns no hidden-states tensor"
        if hidden.requires_grad:
            return "the frozen prefix's output depends on trainable parameters"
        forms = [_form(output) for _, _, output in chain]
        if None in forms:
            return f"{names[id(chain[forms.index(None)][0])]} returns more than its hidden states"
        return Chain([names[id(m)] for m, _, _ in chain], forms, hidden.nbytes // len(hidden))

    def view(self, model: nn.Module) -> tuple[nn.Module, Replay]:
        """``model`` with the chain replaced: a Replay for its first module, pass-throughs for the rest."""
        replay = Replay(self.forms[0])
        swaps: dict[str, nn.Module] = {self.paths[0]: replay}
        swaps.update({path: PassThrough(form) for path, form in zip(self.paths[1:], self.forms[1:], strict=True)})
        return graft(model, swaps), replay

    @torch.no_grad()
    def outputs(self, model: nn.Module, run: Callable[[nn.Module, Any], Any], batches: Iterable[Any]) -> torch.Tensor:
        """The chain's last hidden states for each batch (``run(model, batch)`` runs a forward pass; it stops
        there), concatenated on the CPU."""
        found: list[torch.Tensor] = []

        def keep(module: nn.Module, args: tuple, output: Any) -> None:
            found.append(_hidden(output).detach().cpu())
            raise _Stop

        handle = model.get_submodule(self.paths[-1]).register_forward_hook(keep)
        try:
            for batch in batches:
                with contextlib.suppress(_Stop):
                    run(model, batch)
        finally:
            handle.remove()
        return torch.cat(found)
