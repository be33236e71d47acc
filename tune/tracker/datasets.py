"""What a task's data are, as its runs' MLflow datasets record them: each split (train, val, test) with its name,
its source, a digest that changes when the data do, and its sample count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["SPLITS", "DataSplit", "describe"]

SPLITS = (("train", "train_data"), ("val", "val_data"), ("test", "test_data"))


@dataclass(frozen=True)
class DataSplit:
    """One split of a task's data as its runs record it: ``split`` (train, val, test), a name, where it came from
    (a path, or a description), a digest that changes when the data do, and its sample count (None: not known)."""

    split: str
    name: str
    source: str
    digest: str
    rows: int | None


def describe(task: Any) -> list[DataSplit]:
    """The task's splits (those it has), each with its digest: of the tensors where the data are tensors (the
    digits default, tokenized text), of the file list with sizes where they are files in folders (an image folder,
    a dataset yaml's folders: names and sizes, not every byte of every image), else of its type and size; and
    of what the task's ``also_digested`` adds to a split (yolo's labels)."""
    sources = dict(task.sources or {})
    also = dict(getattr(task, "also_digested", None) or {})
    splits = []
    for split, attribute in SPLITS:
        data = getattr(task, attribute, None)
        source = str(sources.get(split, "in memory"))
        if data is None and not Path(source).exists():  # the task has no such split
            continue
        digest, rows = _fingerprint(data, source, also.get(split, ()))
        splits.append(DataSplit(split, f"{task.name}-{split}", source, digest, rows))
    return splits


def _files_digest(digest: Any, folder: Path) -> int:
    """A folder's file names and sizes into ``digest``; returns how many files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\n".encode())
    return len(files)


def _fingerprint(data: Any, source: str, also: Sequence[str] = ()) -> tuple[str, int | None]:
    digest = hashlib.sha256()
    tensors = (list(data) if _is_tensor_pair(data) else
               list(data.tensors.values()) if isinstance(getattr(data, "tensors", None), Mapping) else None)
    if tensors is not None:
        for tensor in tensors:
            digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        rows: int | None = len(tensors[0])
    elif data is not None and hasattr(data, "samples") and hasattr(data, "root"):  # torchvision's ImageFolder
        root = Path(data.root)
        for path, target in data.samples:
            digest.update(f"{Path(path).relative_to(root)}\0{Path(path).stat().st_size}\0{target}\n".encode())
        rows = len(data.samples)
    elif Path(source).is_dir():
        rows = _files_digest(digest, Path(source))
    elif Path(source).is_file():
        digest.update(Path(source).read_bytes())
        rows = len(data) if data is not None else None
    else:
        digest.update(f"{type(data).__qualname__}\0{len(data) if data is not None else ''}".encode())
        rows = len(data) if data is not None else None
    for extra in also:  # more of the split than its source shows (yolo's labels)
        digest.update(f"\0{Path(extra).name}\0".encode())
        if Path(extra).is_dir():
            _files_digest(digest, Path(extra))
        elif Path(extra).is_file():
            digest.update(Path(extra).read_bytes())
    return digest.hexdigest()[:8], rows


def _is_tensor_pair(data: Any) -> bool:
    """Two in-memory tensors ``(inputs, targets)`` (``tune.training.data.is_tensor_pair``)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
