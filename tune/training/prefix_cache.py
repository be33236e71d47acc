"""The frozen-prefix cache: a frozen prefix's outputs computed once and trained on, where that is exact.

A trial whose frozen blocks begin with a prefix of a sequential model (blocks [0, k) frozen; with a trained window
or a list, frozen blocks after trained ones run every step), deterministic in training (no input augmentation,
frozen BatchNorm in eval mode, no dropout in it), trains the blocks after the prefix on the prefix's outputs,
computed once (``prefix_outputs``); a model with named inputs (an encoder) trains a view of itself that replays
its frozen chain's cached hidden states (``tune.training.prefix_chain``). ``cached_prefix`` is the one call a trial
makes: the prefix computed once, or why not (``blocker``, the size limit, the chain's checks). The trials of a search
share those outputs through files under the storage path (``SharedPrefixCache``, ``directory``), keyed by a hash
of the prefix's weights, its depth and the data, so that a second trial freezing the same prefix loads what the
first computed.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.training import data, measure
from tune.training.freeze import FrozenModel
from tune.training.prefix_chain import Chain, Replay, WithHidden

__all__ = ["CachedPrefix", "SharedPrefixCache", "blocker", "cached_prefix", "describe", "directory",
           "prefix_outputs", "sequence_outputs"]


@dataclass(frozen=True)
class CachedPrefix:
    """A frozen prefix computed once, and what the trial trains each step instead of the whole model on the task's
    data: ``net`` (the blocks after the prefix, or a view of the model that replays the chain's cached hidden
    states, ``replay`` giving each batch's to it) on ``train_set`` / ``val_set`` (the prefix's outputs, or the data
    with them). ``features`` are the cached training outputs (training memory beside the model's), ``seconds``
    training's time for them, paid once, and ``origin`` where they came from (``prefix_outputs``)."""

    net: nn.Module
    train_set: Any
    val_set: Any
    features: torch.Tensor
    seconds: float
    origin: str
    replay: Replay | None = None

    @property
    def tag(self) -> str:
        """The trial's ``prefix_cache`` tag: ``on``, with where the outputs came from unless computed here."""
        return "on" if self.origin == "computed" else f"on ({self.origin})"


def cached_prefix(frozen: FrozenModel, task: Any, cfg: Any, train_set: Any, val_set: Any, device: torch.device,
                  shared: SharedPrefixCache | None = None) -> CachedPrefix | str:
    """The frozen prefix of a trial's model (``frozen``, its module on ``device``) computed once on its training and
    validation data (``train_set`` / ``val_set``: tensor pairs already on ``device``, or datasets), or why it is
    not: ``blocker``, the training outputs' size over ``cfg.prefix_cache_max_mb``, or a model with named inputs
    whose chain ``Chain.find`` refuses or whose cached view does not score as the model does. ``task`` is the
    trial's ``tune.tasks.Task``, ``cfg`` its TrainConfig; ``shared`` the search's shared cache, if any."""
    named = not frozen.block_model.sequential and _named_samples(task.train_data)
    reason = blocker(frozen, task.augments, cfg.prefix_cache, own_loader=task.train_loader is not None,
                     named_inputs=named)
    if reason is not None:
        return reason
    planner = _Planner(frozen, task, cfg, train_set, val_set, device)
    return planner.sequence(shared) if frozen.block_model.sequential else planner.chain(shared)


def blocker(frozen: FrozenModel, augments: bool, setting: str = "auto", own_loader: bool = False,
            named_inputs: bool = False) -> str | None:
    """Why the frozen blocks' outputs cannot be computed once and reused every epoch, or None when they may be
    (a model that is not a plain sequence of blocks, with named inputs, is checked further by ``Chain.find``)."""
    spec, block_model = frozen.spec, frozen.block_model
    if setting == "off":
        return "off in the config"
    if not spec.blocks:
        return "nothing frozen"
    if frozen.adapters is not None:
        return "LoRA adapters train in the frozen blocks"
    if not block_model.sequential and not named_inputs:
        return "the model is not a plain sequence of blocks"
    if not spec.prefix_stop:
        return "the frozen blocks are not a prefix"
    if augments:
        return "the task augments its inputs"
    if own_loader:
        return "the task builds its own training loader"
    prefix = block_model.modules_of(spec.prefix_blocks)  # frozen blocks after a trained one run every step
    if frozen.frozen_dropout == "train" and any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                                for m in prefix):
        return "dropout in the frozen prefix (frozen_dropout: train)"
    if frozen.frozen_bn == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in prefix):
        return "frozen BatchNorm updates its statistics (frozen_bn: train)"
    return None


class SharedPrefixCache:
    """Frozen-prefix outputs shared by the trials of a search: one file per key under ``directory`` (the search's
    storage folder, which every node of a cluster writes). The key hashes the prefix's weights and buffers, its
    depth and the inputs, so two trials freezing the same prefix of the same weights on the same data pay for it
    once; anything else gets another key. Files are written whole and renamed into place (two trials computing
    the same key at once both write the same bytes) and loaded with weights_only=True."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(weights: Iterable[tuple[str, torch.Tensor]], depth: int, *inputs: torch.Tensor) -> str:
        """The key of a prefix's named weights and buffers, its depth and its inputs, and the autocast it runs under
        (a bf16-mixed trial's outputs are not a float32 trial's)."""
        mode = next((f";autocast={torch.get_autocast_dtype(kind)}" for kind in ("cuda", "cpu")
                     if torch.is_autocast_enabled(kind)), "")
        digest = hashlib.sha256(f"depth={depth}{mode}".encode())
        for name, tensor in [*weights, *((f"input{i}", t) for i, t in enumerate(inputs))]:
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


def prefix_outputs(compute: Callable[[str], torch.Tensor], key: Callable[[], str], shared: SharedPrefixCache | None,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """The prefix's outputs on the training and validation inputs (``compute("train")``, ``compute("val")``),
    where they came from ("computed", "shared, computed", "shared, loaded"), and training's time for them:
    computing the training outputs, and with a shared cache hashing (``key()``), loading and writing too (the
    validation outputs are evaluation's, which no time counts)."""
    watch = measure.Stopwatch(device)
    name = ""
    if shared is not None:
        with watch.running():
            name = key()
            found = shared.get(name)
            if found is not None:
                found = {which: tensor.to(device) for which, tensor in found.items()}
        if found is not None:
            return found["train"], found["val"], "shared, loaded", watch.seconds
    with watch.running():
        train_out = compute("train")
    val_out = compute("val")
    if shared is None:
        return train_out, val_out, "computed", watch.seconds
    with watch.running():
        shared.put(name, {"train": train_out, "val": val_out})
    return train_out, val_out, "shared, computed", watch.seconds


def sequence_outputs(prefix: nn.Module, depth: int, train_x: torch.Tensor, val_x: torch.Tensor,
                     shared: SharedPrefixCache | None, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """``prefix_outputs`` of a plain sequence's first ``depth`` blocks (``prefix``) on two input tensors."""
    inputs = {"train": train_x, "val": val_x}
    return prefix_outputs(lambda which: _outputs(prefix, inputs[which]),
                          lambda: SharedPrefixCache.key(prefix.state_dict().items(), depth, train_x, val_x),
                          shared, device)


@torch.no_grad()
def _outputs(prefix: nn.Module, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    prefix.eval()
    return torch.cat([prefix(inputs[start:start + batch_size]) for start in range(0, len(inputs), batch_size)])


def directory(storage_path: str) -> str | None:
    """Where the trials of every search under ``storage_path`` share frozen-prefix outputs (keys are content
    hashes, so searches, confirmations and resumed searches share safely); None for a remote URI, where each
    trial computes its own. The folder can be deleted at any time."""
    return None if "://" in storage_path else str(Path(storage_path).resolve() / "prefix_cache")


def describe(storage_path: str) -> str | None:
    """What the shared cache holds on disk, in one line (it is never pruned, so the user sees its size)."""
    folder = directory(storage_path)
    files = sorted(Path(folder).glob("*.pt")) if folder else []
    if not files:
        return None
    size = sum(f.stat().st_size for f in files) / 2**20
    return (f"Frozen-prefix cache: {len(files)} file{'s' * (len(files) > 1)}, {size:.1f} MB in {folder} (later "
            "searches with the same storage path, weights and data reuse them; delete the folder any time)")


class _Planner:
    """Caching one trial's frozen prefix (``cached_prefix``): a plain sequence's, or a chain's."""

    def __init__(self, frozen: FrozenModel, task: Any, cfg: Any, train_set: Any, val_set: Any,
                 device: torch.device) -> None:
        self.frozen, self.task, self.cfg, self.device = frozen, task, cfg, device
        self.model = frozen.module
        self.train_set, self.val_set = train_set, val_set

    def _too_big(self, sample_bytes: int) -> str | None:
        size_mb = sample_bytes * data.sample_count(self.task.train_data) / 2**20
        if size_mb > self.cfg.prefix_cache_max_mb:
            return (f"the cached training outputs would take {size_mb:,.0f} MB (train.prefix_cache_max_mb: "
                    f"{self.cfg.prefix_cache_max_mb:g})")
        return None

    def sequence(self, shared_cache: SharedPrefixCache | None) -> CachedPrefix | str:
        """Cache a plain sequence's frozen prefix: train and evaluate the blocks after it on its outputs."""
        blocks, stop = self.frozen.block_model.blocks, self.frozen.spec.prefix_stop
        prefix, net = nn.Sequential(*blocks[:stop]), nn.Sequential(*blocks[stop:])
        (train_x, train_y), (val_x, val_y) = (self._tensors(d) for d in (self.train_set, self.val_set))
        with torch.no_grad():
            prefix.eval()
            too_big = self._too_big(prefix(train_x[:1]).nbytes)
        if too_big:
            return too_big
        train_f, val_f, origin, seconds = sequence_outputs(prefix, stop, train_x, val_x, shared_cache, self.device)
        return CachedPrefix(net, (train_f, train_y), (val_f, val_y), train_f, seconds, origin)

    def chain(self, shared_cache: SharedPrefixCache | None) -> CachedPrefix | str:
        """Cache the frozen chain of a model with named inputs (an encoder: embeddings and layers): train and
        evaluate a view of the model that replays the chain's cached hidden states
        (``tune.training.prefix_chain.Chain``), after checking on a few samples that the view's loss and metrics are the
        model's."""
        step, frozen, spec = self.task.step, self.frozen, self.frozen.spec
        size = min(8, self.cfg.batch_size)
        sample = next(data.batches(self.train_set, size, self.device))
        chain = Chain.find(frozen, lambda model: step(model, sample))
        if isinstance(chain, str):
            return chain
        view, replay = chain.view(self.model)
        batch_size = max(self.cfg.batch_size, 64)

        def compute(which: str) -> torch.Tensor:
            frozen.train_mode()
            dataset = self.train_set if which == "train" else self.val_set
            return chain.outputs(self.model, step, data.batches(dataset, batch_size, self.device))

        def key() -> str:
            weights = [(n, p) for n, p in self.model.named_parameters()
                       if frozen.block_model.param_blocks[n] in spec.prefix_blocks]
            weights += [(f"{p}.{n}", b) for p in chain.paths for n, b in self.model.get_submodule(p).named_buffers()]
            inputs = [t for d in (self.train_set, self.val_set) for _, t in sorted(data.stacked(d).items())]
            return SharedPrefixCache.key(weights, spec.prefix_stop, *inputs)

        too_big = self._too_big(chain.sample_bytes)
        if too_big:
            return too_big
        train_h, val_h, origin, seconds = prefix_outputs(compute, key, shared_cache, self.device)
        train_set = WithHidden(self.train_set, train_h.cpu())
        val_set = WithHidden(self.val_set, val_h.cpu())
        differs = self._differs(view, replay, sample, next(data.batches(train_set, size, self.device)),
                                next(data.batches(self.val_set, size, self.device)),
                                next(data.batches(val_set, size, self.device)))
        if differs:
            return differs
        return CachedPrefix(view, train_set, val_set, train_set.hidden, seconds, origin, replay)

    def _differs(self, view: nn.Module, replay: Replay, sample: Any, cached_sample: Any,
                 val_sample: Any, cached_val: Any) -> str | None:
        """Why the cached view is not the model (its training loss, or its metrics, on a few samples), or None."""
        with torch.no_grad():
            losses = []
            for net, batch in ((self.model, sample), (view, replay.take(cached_sample))):
                torch.manual_seed(self.cfg.seed)  # the same dropout in the trained part
                self.frozen.train_mode(net)
                losses.append(self.task.step(net, batch).item())
        if not _close(losses[0], losses[1]):
            return f"the cached view's training loss is not the model's ({losses[1]:.6g} against {losses[0]:.6g})"
        want = self.task.evaluate(self.model, [val_sample])
        have = self.task.evaluate(view, replay.feeding([cached_val]))
        for name, value in want.items():
            if not _close(value, have[name]):
                return f"the cached view's {name} is not the model's ({have[name]:.6g} against {value:.6g})"
        return None

    def _tensors(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if data.is_tensor_pair(dataset):
            return dataset
        return tuple(t.to(self.device) for t in data.materialize(dataset, self.task.num_workers))


def _named_samples(dataset: Any) -> bool:
    """Whether a dataset's samples are mappings of named inputs (a tokenized text's ``input_ids``, ...)."""
    return not data.is_tensor_pair(dataset) and len(dataset) > 0 and isinstance(dataset[0], Mapping)


def _close(want: float, have: float) -> bool:
    return math.isclose(want, have, rel_tol=1e-5, abs_tol=1e-6)
