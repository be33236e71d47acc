"""Time and memory measurement for one trial.

Peak training memory comes from one of two sources, named in ``mem_source``:
- ``cuda``: ``torch.cuda.max_memory_allocated`` over the epoch (never run on a GPU in this project's CI).
- ``model``: on CPU, an exact count of the bytes training holds at its peak: parameters and buffers,
  gradients of trainable parameters, optimizer state, and the activations autograd saved for backward in one
  full batch (each storage counted once; parameters it saves are not counted twice), plus, with the
  frozen-prefix cache on, the cached features of the training set (added by tune.training.train).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["SavedActivations", "Stopwatch", "cuda_peak_mem_mb", "epoch_memory", "gpu_util_pct", "model_mem_bytes",
           "rss_mb", "synchronize", "tensor_bytes"]

MB = 1024 * 1024


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that a clock read means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates synchronised wall time over ``with watch.running():`` sections."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    @contextmanager
    def running(self) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds += time.perf_counter() - start


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())


class SavedActivations:
    """Counts the bytes autograd saves for backward inside ``with meter.recording(model):``."""

    def __init__(self) -> None:
        self.peak_bytes = 0

    @contextmanager
    def recording(self, model: nn.Module) -> Iterator[None]:
        owned = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
        seen: dict[tuple[str, int], int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            key = _storage_key(tensor)
            if key not in owned and key not in seen:
                seen[key] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield
        self.peak_bytes = max(self.peak_bytes, sum(seen.values()))


def model_mem_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, activation_bytes: int) -> int:
    """Parameters + buffers + gradients + optimizer state + saved activations, in bytes."""
    params = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    grads = tensor_bytes(p for p in model.parameters() if p.requires_grad)
    state = tensor_bytes(v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return params + grads + state + activation_bytes


def cuda_peak_mem_mb(device: torch.device, reset: bool = False) -> float:
    """The CUDA allocator's peak since the last reset, in MB (CUDA only)."""
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    return torch.cuda.max_memory_allocated(device) / MB


def gpu_util_pct(device: torch.device) -> float | None:
    """GPU utilisation over the last sample period, through NVML (CUDA only; None if NVML is missing)."""
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or the driver refuses: the metric is simply not reported
        return None


def epoch_memory(device: torch.device, counted_bytes: Callable[[], int]) -> dict[str, Any]:
    """An epoch's peak training memory: on a GPU the allocator's peak since the epoch's reset, with the GPU's
    utilisation where NVML answers; elsewhere ``counted_bytes()``, the exact count."""
    if device.type == "cuda":
        metrics: dict[str, Any] = {"peak_mem_mb": cuda_peak_mem_mb(device), "mem_source": "cuda"}
        utilisation = gpu_util_pct(device)
        if utilisation is not None:
            metrics["gpu_util_pct"] = utilisation
        return metrics
    return {"peak_mem_mb": counted_bytes() / MB, "mem_source": "model"}


def rss_mb() -> float:
    """This process's resident memory now (Linux), or its peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MB if sys.platform == "darwin" else peak / 1024
