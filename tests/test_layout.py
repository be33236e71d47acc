"""The layout docs/development.md gives is the package's: every module of tune/ named there, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import run_search

ROOT = Path(run_search.__file__).resolve().parent


def test_the_development_layout_names_every_module_of_the_package_and_no_other():
    text = (ROOT / "docs" / "development.md").read_text()
    layout = re.search(r"## A search, read from the top\n.*?```\n(.*?)```", text, flags=re.S).group(1)
    named = set(re.findall(r"^(tune/[\w/]+(?:\.py|/))", layout, flags=re.M))
    package = ROOT / "tune"
    present = {f"tune/{path.name}" for path in package.glob("*.py")}
    present |= {f"tune/{path.parent.name}/" for path in package.glob("*/__init__.py")}
    assert named == present, (sorted(present - named), sorted(named - present))
