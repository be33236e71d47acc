"""A trial's numeric precision and memory layout, as users train on a GPU: ``train.precision`` in Lightning's words
(``32``, ``bf16-mixed``, ``16-mixed``, ``auto``) and ``train.channels_last``.

Mixed precision is ``torch.autocast`` around the forward pass and the loss, in training and in evaluation (the frozen
prefix's cached outputs are computed under it too, so they are what the uncached prefix gives); ``16-mixed`` adds a
GradScaler (CUDA only), whose state a checkpoint keeps. ``auto`` is ``32`` on the CPU: a search on the CPU keeps its
float32 figures. The CUDA-only parts are ``auto``'s choice (``_cuda_bf16``) and the GradScaler; neither has run on a
GPU here (benchmarks/gpu_check.py is what the first GPU will run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tune.errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "grad_scaler", "resolve", "to_channels_last", "use_channels_last"]

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _cuda_bf16(device: torch.device) -> bool:
    """Whether the CUDA device computes in bfloat16 natively (Ampere and later)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve(setting: str, device: torch.device) -> str:
    """The precision a trial on ``device`` trains in: ``setting``, or for ``auto`` bf16-mixed on a CUDA device that
    supports it, 16-mixed on one that does not, 32 elsewhere. 16-mixed off CUDA is refused (ConfigError)."""
    if setting == "auto":
        if device.type != "cuda":
            return "32"
        return "bf16-mixed" if _cuda_bf16(device) else "16-mixed"
    if setting == "16-mixed" and device.type != "cuda":
        raise ConfigError("train.precision", setting, "32, bf16-mixed or auto on the CPU (16-mixed is float16 with a "
                                                      "GradScaler: CUDA only)", problem=f"the trial runs on {device}")
    return setting


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The forward pass and loss in ``precision``: torch.autocast for the mixed ones, nothing for 32."""
    if precision == "32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def grad_scaler(precision: str, device: torch.device) -> Any:
    """A GradScaler for 16-mixed (float16 gradients underflow without one), else None."""
    return torch.amp.GradScaler(device.type) if precision == "16-mixed" else None


def use_channels_last(setting: bool | str, model: nn.Module, device: torch.device) -> bool:
    """``train.channels_last``: as set, or for ``auto`` on for a model with 2-d convolutions on CUDA (where cuDNN's
    NHWC kernels are faster; on the CPU the default layout is kept)."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_channels_last(batch: Any) -> Any:
    """A batch with its 4-d image tensors in channels-last memory format (values unchanged)."""
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(item) for item in batch)
    if isinstance(batch, dict):
        return {key: to_channels_last(value) for key, value in batch.items()}
    return batch
