"""Where a search's code came from: the git commit of a checkout (the parent run's ``mlflow.source.git.commit``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["PACKAGE_DIR", "git_commit"]

# this package's folder: what a logged model carries as its code, and inside the checkout a search runs from
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
