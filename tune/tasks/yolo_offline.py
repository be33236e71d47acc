"""Ultralytics in this process, kept offline: its import with downloads off and this project's settings folder, the
hooks that keep its integrations, font and AMP-check downloads out while a trial trains, and the dataset yaml
checked on disk and handed over with nothing left to download."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from tune.errors import ConfigError, one_line

__all__ = ["amp_allowed", "check_data", "config_dir", "offline_copy", "offline_hooks", "ultralytics_offline"]


def config_dir() -> Path:
    """Ultralytics' settings folder for this project: the user's own (mode 0700), not Ultralytics' default (its
    settings turn on integrations) and not a shared /tmp path another user could prepare."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "freeze-depth-search" / "ultralytics"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def ultralytics_offline() -> Any:
    """Import Ultralytics offline, quiet, with this project's settings folder (its own downloads are kept out
    while a trial trains: offline_hooks)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")  # trials report through this project; no progress bars
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir())
    try:
        import ultralytics
        import ultralytics.data.utils
    except ImportError as err:
        raise ConfigError("task.name", "yolo", 'the yolo extra installed: pip install -e ".[yolo]"',
                          problem=f"{type(err).__name__}: {err}") from None
    return ultralytics


# GPUs on which Ultralytics turns AMP off (NaN losses or zero mAP reported on them): its check_amp's list.
AMP_UNSAFE_GPUS = ("1660", "1650", "1630", "t400", "t550", "t600", "t1000", "t1200", "t2000", "k40m")


def amp_allowed(model: torch.nn.Module) -> bool:
    """Ultralytics' check_amp without the model it downloads (and loads as a pickle) to compare fp32 and AMP
    outputs: AMP only on CUDA, and not on the GPUs that check turns it off for."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    name = torch.cuda.get_device_name(device).lower()
    return not any(gpu in name for gpu in AMP_UNSAFE_GPUS)


@contextlib.contextmanager
def offline_hooks() -> Iterator[None]:
    """While a trial builds and runs its trainer: no Ultralytics integrations (its own MLflow, Ray Tune, W&B,
    Platform... loggers, some of which act as soon as they are added), no font download (check_font, for plots
    this project does not make) and no AMP self-check download (amp_allowed instead). Restored afterwards."""
    import ultralytics.data.utils
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import callbacks

    patches = [(callbacks, "add_integration_callbacks", lambda instance: None),
               (ultralytics.data.utils, "check_font", lambda *args, **kwargs: None),
               (trainer_module, "check_amp", amp_allowed)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def dataset_root(path: Path, raw: Mapping[str, Any]) -> Path:
    """The dataset's root: its ``path:`` (relative to the yaml's folder), else the yaml's folder."""
    root = Path(str(raw.get("path") or path.parent)).expanduser()
    return root if root.is_absolute() else (path.parent / root).resolve()


def offline_copy(path: Path, raw: Mapping[str, Any], directory: Path) -> str:
    """The dataset yaml as Ultralytics gets it: an absolute ``path:`` (Ultralytics would read a relative one
    against the working directory, miss, and run the yaml's ``download:``) and no ``download:`` key."""
    copy = {key: value for key, value in raw.items() if key != "download"}
    copy["path"] = str(dataset_root(path, raw))
    target = directory / path.name
    target.write_text(yaml.safe_dump(copy, sort_keys=False), encoding="utf-8")
    return str(target)


def check_data(data: Any) -> tuple[Path, dict[str, Any]]:
    allowed = "an Ultralytics dataset yaml (train, val, names) whose images are on disk"
    if not isinstance(data, (str, Path)) or not str(data):
        raise ConfigError("task.options.data", data, allowed, problem="missing")
    path = Path(data).expanduser().resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("task.options.data", str(data), allowed, problem=type(err).__name__) from None
    except yaml.YAMLError as err:
        raise ConfigError("task.options.data", str(data), allowed, problem=one_line(err, limit=None)) from None
    if not isinstance(raw, dict) or not {"train", "val", "names"} <= raw.keys():
        raise ConfigError("task.options.data", str(data), allowed, problem="no train, val or names")
    root = dataset_root(path, raw)
    for split in ("train", "val", *(("test",) if raw.get("test") else ())):  # test: optional, often left empty
        entries = raw[split] if isinstance(raw[split], list) else [raw[split]]
        for entry in entries:
            if not (root / str(entry)).exists():  # Ultralytics would try the yaml's download: key
                raise ConfigError(f"task.options.data.{split}", str(root / str(entry)), allowed,
                                  problem="not on disk; nothing is downloaded")
    return path, raw
