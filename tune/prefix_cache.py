"""The frozen-prefix cache: a frozen prefix's outputs computed once and trained on, where that is exact.

A trial whose frozen blocks are a prefix of a sequential model, deterministic in training (no input augmentation,
frozen BatchNorm in eval mode, no dropout in it), trains the blocks after the prefix on the prefix's outputs,
computed once (``prefix_outputs``). ``blocker`` says why a trial cannot. The trials of a search share those outputs
through files under the storage path (``SharedPrefixCache``, ``directory``), keyed by a hash of the prefix's
weights, its depth and the data, so that a second trial freezing the same prefix loads what the first computed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from tune import measure
from tune.freeze import FrozenModel

__all__ = ["SharedPrefixCache", "blocker", "describe", "directory", "prefix_outputs"]


def blocker(frozen: FrozenModel, augments: bool, setting: str = "auto", own_loader: bool = False) -> str | None:
    """Why the frozen blocks' outputs cannot be computed once and reused every epoch, or None when they can."""
    spec, block_model = frozen.spec, frozen.block_model
    if setting == "off":
        return "off in the config"
    if not spec.blocks:
        return "nothing frozen"
    if not block_model.sequential:
        return "the model is not a plain sequence of blocks"
    if not spec.is_prefix:
        return "the frozen blocks are not a prefix"
    if augments:
        return "the task augments its inputs"
    if own_loader:
        return "the task builds its own training loader"
    prefix = block_model.modules_of(spec.blocks)
    if any(isinstance(m, nn.modules.dropout._DropoutNd) for m in prefix):
        return "dropout in the frozen prefix"
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
    def key(prefix: nn.Module, depth: int, *inputs: torch.Tensor) -> str:
        digest = hashlib.sha256(f"depth={depth}".encode())
        for name, tensor in [*prefix.state_dict().items(), *((f"input{i}", t) for i, t in enumerate(inputs))]:
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


def prefix_outputs(prefix: nn.Module, depth: int, train_x: torch.Tensor, val_x: torch.Tensor,
                   shared: SharedPrefixCache | None, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """The prefix's outputs on the training and validation inputs, where they came from ("computed", "shared,
    computed", "shared, loaded"), and training's time for them: computing the training outputs, and with a shared
    cache hashing, loading and writing too (the validation outputs are evaluation's, which no time counts)."""
    watch = measure.Stopwatch(device)
    key = ""
    if shared is not None:
        with watch.running():
            key = shared.key(prefix, depth, train_x, val_x)
            found = shared.get(key)
            if found is not None:
                found = {name: tensor.to(device) for name, tensor in found.items()}
        if found is not None:
            return found["train"], found["val"], "shared, loaded", watch.seconds
    with watch.running():
        train_out = _outputs(prefix, train_x)
    val_out = _outputs(prefix, val_x)
    if shared is None:
        return train_out, val_out, "computed", watch.seconds
    with watch.running():
        shared.put(key, {"train": train_out, "val": val_out})
    return train_out, val_out, "shared, computed", watch.seconds


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
