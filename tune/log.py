"""The search's console lines go through the standard ``logging`` logger named ``tune``.

By default the library adds one handler to it: INFO lines to stdout, warnings to stderr, each flushed at once (a Ray
Job's log or a pipe shows them as they happen), the message alone. A caller who wants the lines elsewhere removes it
(``tune.log.disable_default_handler()``) and adds its own handler, or lets the lines propagate to the root logger
(``tune.log.enable_propagation()``), as Optuna's ``optuna.logging`` does.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["disable_default_handler", "enable_default_handler", "enable_propagation", "logger", "say", "warn"]

logger = logging.getLogger("tune")


class _Console(logging.Handler):
    """INFO to stdout, WARNING and above to stderr; the streams are looked up at each line (pytest's capture and a
    caller's redirect_stdout replace them)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed pipe must not fail a search
            self.handleError(record)


_default = _Console()
_default.setFormatter(logging.Formatter("%(message)s"))


def enable_default_handler() -> None:
    if _default not in logger.handlers:
        logger.addHandler(_default)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def disable_default_handler() -> None:
    logger.removeHandler(_default)


def enable_propagation() -> None:
    """Let the lines reach the root logger's handlers too (then disable the default handler to print them once)."""
    logger.propagate = True


logger.propagate = False
enable_default_handler()


def say(line: str) -> None:
    """One of the search's own lines (progress, the report)."""
    logger.info(line)


def warn(line: str) -> None:
    """A warning line (stderr by default)."""
    logger.warning(line)
