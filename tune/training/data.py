"""A trial's batches: the task's data as loaders whose order and randomness depend on (seed, epoch) alone.

A task gives its training and validation data in one of two forms (``tune.tasks.Task``):
- two in-memory tensors ``(inputs, targets)``: batches are slices of them, on the trial's device;
- a map-style ``torch.utils.data.Dataset`` of samples: batches come from a DataLoader (``num_workers``,
  ``pin_memory`` on CUDA); a trial's training batches from one it builds once (``TrainLoader``: persistent
  workers, as users train).
Epoch e visits the training samples in ``epoch_order(n, seed, e)``; each training sample's randomness (its
augmentation, in the main process or in a worker) is seeded from (seed, e, its index), and the rest of the epoch's
(dropout) from (seed, e) by ``seed_epoch``: a trial resumed at epoch e sees exactly the batches the uninterrupted
one would have, with any number of workers. A task may build its own training loader
instead (``Task.train_loader(batch_size, epoch, seed)``); it then owns that promise.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["TrainLoader", "batch_size_of", "batches", "epoch_order", "epoch_seed", "is_tensor_pair", "materialize",
           "sample_count", "seed_epoch", "stacked", "to_device"]

Batch = Any


def is_tensor_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))


# Offsets that give the epoch's streams distinct seeds: its sample order (offset 0), the process's own random
# state (augmentation and dropout in the trial's process) and the loader's workers (their augmentation).
PROCESS, WORKERS = 2**32, 2**33


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of one stream of epoch ``epoch`` (0-based) of a trial seeded ``seed``."""
    return seed * 100_003 + epoch + stream


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` training samples."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch, Python and NumPy for one epoch: augmentation and dropout in it depend on (seed, epoch) only."""
    _seed_all(epoch_seed(seed, epoch, PROCESS))


def to_device(batch: Batch, device: torch.device, non_blocking: bool = False) -> Batch:
    """A batch (tensors, or tuples / lists / mappings of them) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device, non_blocking) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(value, device, non_blocking) for value in batch)
    return batch


def batch_size_of(batch: Batch) -> int:
    """How many samples a batch holds: the length of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return len(batch)
    values = batch.values() if isinstance(batch, Mapping) else batch
    return next(batch_size_of(value) for value in values if isinstance(value, (torch.Tensor, Mapping, tuple, list)))


def batches(data: Any, batch_size: int, device: torch.device, *, order: torch.Tensor | None = None,
            num_workers: int = 0, seed: int = 0) -> Iterator[Batch]:
    """Batches of ``data`` on ``device``, in ``order`` (the sample indices; None: as stored, for evaluation).
    ``seed`` seeds the loader's workers (their augmentation) for this pass."""
    if is_tensor_pair(data):
        inputs, targets = data
        index = torch.arange(len(inputs)) if order is None else order
        index = index.to(inputs.device)
        for start in range(0, len(index), batch_size):
            chunk = index[start:start + batch_size]
            yield inputs[chunk].to(device), targets[chunk].to(device)
        return
    pin = device.type == "cuda"
    loader = DataLoader(data, batch_size=batch_size, sampler=None if order is None else order.tolist(),
                        num_workers=num_workers, pin_memory=pin,
                        generator=torch.Generator().manual_seed(seed))
    for batch in loader:
        yield to_device(batch, device, non_blocking=pin)


class _SeededSamples(Dataset):
    """A dataset read by (seed, index) keys: each read seeds torch, Python and NumPy from its key first, so that a
    sample's augmentation depends on (trial seed, epoch, index) alone, whichever worker reads it. In the main process
    (no workers) the random state is put back afterwards: the epoch's own stream (dropout) goes on undisturbed."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        if torch.utils.data.get_worker_info() is not None:  # a worker: its random state is its samples' own
            _seed_all(seed)
            return self.data[index]
        saved = torch.random.get_rng_state(), random.getstate(), _numpy_state()
        try:
            _seed_all(seed)
            return self.data[index]
        finally:
            torch.random.set_rng_state(saved[0])
            random.setstate(saved[1])
            if saved[2] is not None:
                import numpy

                numpy.random.set_state(saved[2])


def _seed_all(value: int) -> None:
    torch.manual_seed(value)
    random.seed(value)
    try:
        import numpy

        numpy.random.seed(value % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        pass


def _numpy_state() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover
        return None
    return numpy.random.get_state()


class _Keys(torch.utils.data.Sampler):
    """The current epoch's (seed, index) keys; set before each pass (the sampler stays in the main process)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class TrainLoader:
    """A trial's training batches from one DataLoader built once (persistent workers, pinned memory on CUDA), as
    users train: epoch e visits the samples in ``order`` and seeds each one's read from (seed, e, index)."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> None:
        self.device, self.pin = device, device.type == "cuda"
        self.sampler = _Keys()
        self.loader = DataLoader(_SeededSamples(dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, pin_memory=self.pin, persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(0))  # its own: the epoch's stream untouched

    def epoch(self, order: torch.Tensor, seed: int, epoch: int) -> Iterator[Batch]:
        base = epoch_seed(seed, epoch, WORKERS)
        self.sampler.keys = [(hash((base, index)) & (2**63 - 1), index) for index in order.tolist()]
        for batch in self.loader:
            yield to_device(batch, self.device, non_blocking=self.pin)


def sample_count(data: Any) -> int:
    """How many samples a tensor pair or a dataset holds."""
    return len(data[0]) if is_tensor_pair(data) else len(data)


def materialize(data: Dataset | Sequence, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset of (input, target) samples as two tensors, in its own order (what a cached prefix runs on)."""
    inputs, targets = [], []
    for x, y in batches(data, 256, torch.device("cpu"), num_workers=num_workers):
        inputs.append(x)
        targets.append(torch.as_tensor(y))
    return torch.cat(inputs), torch.cat(targets)


def stacked(data: Dataset) -> dict[str, torch.Tensor]:
    """A dataset of mapping samples as one tensor per key, in its own order (what a cache key hashes)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches(data, 256, torch.device("cpu")):
        for key, value in batch.items():
            parts.setdefault(key, []).append(torch.as_tensor(value))
    return {key: torch.cat(values) for key, values in parts.items()}
