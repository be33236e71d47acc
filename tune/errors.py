"""The one error a user's input can raise, shared by every module that checks input."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ConfigError", "one_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours some libraries put in their messages


class ConfigError(ValueError):
    """Bad input: names the key, the value given and what is allowed, on one line.

    The CLI prints ``str(error)`` and exits with code 2.
    """

    def __init__(self, key: str, value: Any, allowed: str, problem: str | None = None) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        self.problem = problem
        got = f"got {value!r}" if problem is None else f"got {value!r} ({problem})"
        super().__init__(f"{key}: {got}; allowed: {allowed}")


def one_line(text: object, limit: int | None = 200) -> str:
    """``text`` (an exception, a message) on one line, cut at ``limit`` characters (None: whole): for ConfigError
    problems."""
    return " ".join(_ANSI.sub("", str(text)).split())[:limit]
