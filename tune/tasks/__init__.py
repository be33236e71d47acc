"""The tasks: a model as blocks, its data, its loss and its score; built-in ones by name, a user's own by import path
``package.module:function``.

``base`` is what a task is (``Task``: the model, the splits, ``evaluate``, the classes and preprocessing a saved
model takes home); ``digits``, ``image``, ``text`` and ``yolo`` are the bundled tasks (``yolo_trial`` is the yolo task's
trial, Ultralytics' trainer; ``yolo_offline`` keeps Ultralytics from the network, ``shapes`` draws a synthetic
detection set), ``weights`` loads a state dict that fits.
May import ``tune.errors``, ``tune.log``, ``tune.blocks``, ``tune.settings`` and ``tune.training`` (the yolo task's
trial keeps the trial protocol); ``tune.training`` in turn imports ``tune.tasks.base`` alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tune.errors import ConfigError
from tune.settings.config import TaskConfig
from tune.tasks.base import Task, takes_paths

if TYPE_CHECKING:
    from tune.blocks import BlockModel

__all__ = ["BUILTIN_TASKS", "Task", "absolute_paths", "load_block_model", "load_task", "takes_paths",
           "task_config"]

MAY_IMPORT = ("tune.errors", "tune.log", "tune.blocks", "tune.settings", "tune.training")

BUILTIN_TASKS = {"digits": "tune.tasks.digits:make_task", "image": "tune.tasks.image:make_task",
                 "text": "tune.tasks.text:make_task", "yolo": "tune.tasks.yolo:make_task"}

_ALLOWED = f"a built-in task ({', '.join(BUILTIN_TASKS)}) or an import path package.module:function"


def _import_factory(name: str) -> Any:
    path = BUILTIN_TASKS.get(name, name)
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError("task.name", name, _ALLOWED, problem="unknown task")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of user code is bad input, reported in one line
        raise ConfigError("task.name", name, _ALLOWED, problem=f"{type(err).__name__}: {err}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError("task.name", name, _ALLOWED, problem=f"{module_name} has no function {attribute}")
    return factory


def load_task(task_config: TaskConfig) -> Task:
    """Import the task's factory (this runs the module's code) and call it with the task's options; a task given as
    a Python object (``task_config.factory``) is called as it is."""
    factory = task_config.factory or _import_factory(task_config.name)
    try:
        task = factory(**task_config.options)
    except TypeError as err:
        raise ConfigError("task.options", dict(task_config.options), "the keyword arguments of the task factory",
                          problem=str(err)) from None
    except OSError as err:  # missing or unreadable data
        raise ConfigError("task.options", dict(task_config.options), "options that point at readable data",
                          problem=f"{type(err).__name__}: {err}") from None
    if not isinstance(task, Task):
        raise ConfigError("task.name", task_config.name, "a factory that returns tune.tasks.Task",
                          problem=f"it returned {type(task).__name__}")
    return task


def task_config(task: Any) -> TaskConfig:
    """A task given as a Python object: a ``Task``, or a function returning one (called with no arguments in the
    driver and in each trial). Its name in MLflow is the function's import path or the Task's own name."""
    if isinstance(task, Task):
        return TaskConfig(task.name, {}, factory=_Given(task))
    if isinstance(task, torch.nn.Module):  # callable, but a model alone has no data
        raise ConfigError("task", f"{type(task).__name__}(...)", "a tune.Task, or a function returning one (a model "
                          "goes in as the Task's build_model, beside its data, loss and evaluate)")
    if not callable(task):
        raise ConfigError("task", repr(task), "a tune.Task, or a function returning one")
    return TaskConfig(f"{task.__module__}:{getattr(task, '__qualname__', type(task).__name__)}", {}, factory=task)


class _Given:
    """A Task object as a factory (picklable, unlike a lambda in some pickle modes): returns the task itself."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self) -> Task:
        return self.task


def load_block_model(task_config: TaskConfig) -> BlockModel:
    """The task's model alone (``run_search.py layers``): the task module's ``layers_model(options)`` if it has
    one (the yolo task's needs no data set), else the model of the whole task."""
    factory = task_config.factory or _import_factory(task_config.name)
    module = importlib.import_module(factory.__module__) if task_config.factory is None else None
    layers_model = getattr(module, "layers_model", None)
    if callable(layers_model):
        return layers_model(dict(task_config.options))
    return load_task(task_config).build_model()


def absolute_paths(task_config: TaskConfig, base: Path) -> TaskConfig:
    """The task's options with every relative path under ``base`` (the driver's working directory) made
    absolute: Ray Tune runs each trial in its own folder, where a relative path would point nowhere. The options a
    task declares as paths (``takes_paths``) are paths whenever they exist, bare words too (a task that declares
    nothing: its ``data`` and ``*_data`` options); in any other option a string is a path when it has a folder part
    or a file suffix (``data.pt``, ``shapes/shapes.yaml``) and exists, at the top level or inside a list or
    mapping."""
    if task_config.factory is not None:  # a Python object: its options are the caller's own
        return task_config
    factory = _import_factory(task_config.name)
    declared = set(getattr(factory, "path_options", ()))
    if not hasattr(factory, "path_options"):  # a task that declares nothing: a data option is a path, as it was
        declared = {key for key in task_config.options if key == "data" or key.endswith("_data")}
    words = getattr(factory, "path_words", frozenset())
    return TaskConfig(task_config.name, {
        key: _absolute(value, base, bare=key in declared, words=words) for key, value in task_config.options.items()})


def _absolute(value: Any, base: Path, *, bare: bool, words: Collection[str]) -> Any:
    if isinstance(value, str):
        if not value or value in words or Path(value).expanduser().is_absolute() or not (base / value).exists():
            return value
        return str((base / value).resolve()) if bare or _has_path_shape(value) else value
    if isinstance(value, Mapping):
        return {key: _absolute(item, base, bare=bare, words=words) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_absolute(item, base, bare=bare, words=words) for item in value)
    return value


def _has_path_shape(value: str) -> bool:
    path = Path(value)
    return len(path.parts) > 1 or path.suffix != ""
