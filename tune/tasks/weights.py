"""Pretrained weights from a file, in the form each library saves them, loaded onto a model the task built.

Read (``read_state_dict``): a ``.safetensors`` file; a ``torch.save`` state dict, or a training checkpoint that
holds one (timm's ``state_dict`` / ``state_dict_ema``, torchvision's reference scripts' ``model``, this project's
trial checkpoints), loaded with ``weights_only=True``; DataParallel's ``module.`` prefix is dropped. A file that
is a pickle of objects (Ultralytics' ``yolov5mu.pt``, a checkpoint holding ``argparse`` options) runs code when
loaded: it loads only with ``trust_weights: true`` in the task's options, never silently.

Loaded (``load_fitting``): every tensor whose name and shape match; the head's tensors may not fit (another
class count: the head is new), anything else that does not fit is another model's weights and refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tune.errors import ConfigError, one_line

__all__ = ["load_fitting", "read_state_dict"]

KEY = "task.options.weights"
# Where training checkpoints keep their model's tensors, in the order they are preferred.
_CONTAINERS = ("state_dict_ema", "state_dict", "model_ema", "model")


def _is_state(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def read_state_dict(path: str, trust: bool = False, allowed: str = "a state dict or .safetensors file of this model"
                    ) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (see the module's docstring); bad input raises one ConfigError line."""
    hint = f"{allowed} (loaded with weights_only=True; a pickled checkpoint only with task.options.trust_weights: true)"
    if not Path(path).is_file():
        raise ConfigError(KEY, path, hint, problem="no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:  # unreadable, unsafe (pickled objects), corrupt, or safetensors missing
        raise ConfigError(KEY, path, hint, problem=f"{type(err).__name__}: {one_line(err)}") from None
    if isinstance(state, dict) and not _is_state(state):
        modules = [state.get(key) for key in ("ema", "model") if isinstance(state.get(key), nn.Module)]
        if modules:  # Ultralytics' last.pt keeps the EMA model under "ema", a stripped best.pt under "model"
            state = modules[0].float().state_dict()
        else:
            state = next((state[key] for key in _CONTAINERS if _is_state(state.get(key))), state)
    if not _is_state(state):
        raise ConfigError(KEY, path, hint, problem="not a state dict of tensors")
    state = {name: tensor for name, tensor in state.items() if name != "n_averaged"}  # torch's AveragedModel
    if all(name.startswith("module.") for name in state):  # DataParallel, or an EMA's AveragedModel
        state = {name.removeprefix("module."): tensor for name, tensor in state.items()}
    return state


def load_fitting(module: nn.Module, state: dict[str, torch.Tensor], path: str,
                 may_differ: Callable[[str], bool], keep_fitting: bool = True) -> None:
    """Load ``state`` onto ``module``: every tensor of the same name and shape, except those ``may_differ`` allows
    to be left as built (a new head) unless they fit and ``keep_fitting``. Anything else that does not fit is
    refused in one line (another model's weights)."""
    own = module.state_dict()
    # BatchNorm's step counter is missing from files saved before torch 0.4.1; it stays as built
    own = {name: t for name, t in own.items() if name in state or not name.endswith("num_batches_tracked")}
    unfit = sorted(name for name in own if name not in state or state[name].shape != own[name].shape)
    unexpected = sorted(name for name in state if name not in own)
    wrong = unexpected or [name for name in unfit if not may_differ(name)]
    if wrong:
        raise ConfigError(KEY, path, "weights of this model",
                          problem=f"does not fit the model ({len(unexpected)} unexpected, {len(unfit)} missing or "
                                  f"of another shape, e.g. {', '.join(wrong[:3])})")
    skipped = set(unfit) | ({name for name in own if may_differ(name)} if not keep_fitting else set())
    module.load_state_dict({name: t for name, t in state.items() if name not in skipped}, strict=False)
