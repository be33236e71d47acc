"""The one error a user's input can raise, shared by every module that checks input."""

from __future__ import annotations

import pickle
import re
from typing import Any

__all__ = ["ConfigError", "TrialConfigError", "one_line"]

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

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray copies a trial's exception (copy.copy) and pickles it to the driver: both rebuild it from these
        # arguments (BaseException's own reduce passes only the message, which __init__ cannot take). A value that
        # does not pickle travels as its repr.
        value = self.value
        try:
            pickle.dumps(value)
        except Exception:
            value = _Shown(repr(value))
        return type(self), (self.key, value, self.allowed, self.problem)


class TrialConfigError(ConfigError):
    """Bad input the driver could not see, raised by the search's first trials alike (a path a trial's folder does
    not have): the search stopped there, its parent run FAILED with this line as its reason. The CLI prints it and
    exits with code 2, as for any ConfigError."""


class _Shown(str):
    """A value that could not be pickled, shown as its repr (``got ...`` prints it without quotes)."""

    def __repr__(self) -> str:
        return str(self)


def one_line(text: object, limit: int | None = 200) -> str:
    """``text`` (an exception, a message) on one line, cut at ``limit`` characters (None: whole): for ConfigError
    problems."""
    return " ".join(_ANSI.sub("", str(text)).split())[:limit]
