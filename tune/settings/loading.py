"""A search space file read: the strict YAML loader, the bundled spaces by name, the ``--set`` overrides (parsed,
written back, applied) and ``load_config``, which hands the result to tune.settings.config.build_config; an
experiment's name from a task's.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tune.errors import ConfigError, one_line
from tune.settings.config import _SECTIONS, Config, build_config
from tune.settings.fields import _NAME_RE

__all__ = ["DEFAULT_SPACE", "bundled_spaces", "experiment_name", "format_override", "load_config", "parse_overrides",
           "read_yaml", "space_file"]


def experiment_name(text: str, fallback: str) -> str:
    """``text`` as an experiment's name (a task's name such as 'my task'): each character a name may not hold made
    '_', ``fallback`` where that is still no name."""
    named = re.sub(r"[^A-Za-z0-9_.\-]", "_", text)
    return named if _NAME_RE.match(named) else fallback


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``section.key=value`` strings → (dotted key, YAML-parsed value)."""
    parsed = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", item, "section.key=value, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as err:
            problem = one_line(err, limit=None)
            raise ConfigError(f"--set {key}", text, "a YAML scalar, list or mapping", problem=problem) from None
        parsed.append((key, value))
    return parsed


def _plain(value: Any) -> Any:
    """A value as YAML writes it: numpy scalars as Python's, paths as strings, tuples as lists."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def format_override(key: str, value: Any) -> str:
    """(dotted key, value) → ``key=value`` that ``parse_overrides`` reads back as the same value (flow YAML);
    ConfigError naming ``overrides.<key>`` for a value no command line can carry."""
    def written(item: Any) -> str:
        return yaml.safe_dump(item, default_flow_style=True, width=float("inf")).removesuffix("\n...\n").strip()

    try:
        text = written(_plain(value))
        [(_, back)] = parse_overrides([f"{key}={text}"])
    except (yaml.YAMLError, ConfigError) as err:
        raise ConfigError(f"overrides.{key}", value, "a value YAML writes (numbers, strings, bools, null, lists, "
                                                     "mappings)", problem=one_line(err)) from None
    if written(back) != text:  # compared as written: nan is nan
        raise ConfigError(f"overrides.{key}", value, "a value a command line carries unchanged",
                          problem=f"it reads back as {back!r}")
    return f"{key}={text}"


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}", value, f"a key inside a mapping ({part} is {child!r})")
        node = child
    node[parts[-1]] = value


DEFAULT_SPACE = "digits_freeze"  # the embedded default: what a search without a space runs


def bundled_spaces() -> dict[str, Path]:
    """The search spaces that come with the project, by name (``digits_freeze``: search_spaces/digits_freeze.yaml):
    the checkout's search_spaces/ folder, or the installed package's copy of it (tune/search_spaces in the wheel)."""
    here = Path(__file__).resolve().parents[1]  # tune/
    folder = next((f for f in (here.parent / "search_spaces", here / "search_spaces") if f.is_dir()), None)
    return {} if folder is None else {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def space_file(space: str | Path) -> Path:
    """A space file's path: ``space`` itself where that is a file, else the bundled space of that name (with or
    without ``.yaml``); unchanged where neither (load_config then says what is wrong)."""
    path = Path(space)
    if path.is_file() or path.parent != Path("."):
        return path
    return bundled_spaces().get(path.name.removesuffix(".yaml"), path)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(f"{key!r} repeated on line {line}; YAML would keep only the last")
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping (PyYAML keeps the last silently: a space file with
    two ``space:`` sections would search only the second)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """A space file's YAML, loaded safely, with a repeated key refused (yaml.YAMLError)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def load_config(path: str | Path | Mapping[str, Any], overrides: Sequence[tuple[str, Any]] = ()) -> Config:
    """Read a search-space YAML file (safely), apply ``--set`` overrides, check it all. ``path`` may also name a
    bundled space (``digits_freeze``) or be the file's content as a mapping (a config built in Python)."""
    if isinstance(path, Mapping):
        raw = copy.deepcopy(dict(path))
        for dotted, value in overrides:
            _apply_override(raw, dotted, value)
        return build_config(raw)
    path = space_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("--space", str(path), "an existing YAML file or a bundled space ("
                          + ", ".join(bundled_spaces()) + ")", problem="no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ConfigError("--space", str(path), "a readable UTF-8 YAML file", problem=type(err).__name__) from None
    try:
        raw = read_yaml(text)
    except _DuplicateKey as err:
        raise ConfigError(str(path), err.key, "each key once in a mapping", problem=str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), "<file>", "valid YAML", problem=one_line(err, limit=None)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), raw, "a YAML mapping with keys " + ", ".join(sorted(_SECTIONS)))
    for dotted, value in overrides:
        _apply_override(raw, dotted, value)
    return build_config(raw)
