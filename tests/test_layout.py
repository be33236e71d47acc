"""The layout docs/development.md gives is the package's: every module of tune/ named there, and nothing else; each
part (subpackage) imports only what its ``MAY_IMPORT`` allows; a module's path from before the parts still imports as
the same module object; tests/ mirrors the parts."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

import run_search
import tune

ROOT = Path(run_search.__file__).resolve().parent
PACKAGE = ROOT / "tune"
PARTS = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))
TESTS = ROOT / "tests"


def _layout() -> set[str]:
    text = (ROOT / "docs" / "development.md").read_text()
    layout = re.search(r"## A search, read from the top\n.*?```\n(.*?)```", text, flags=re.S).group(1)
    named, part = set(), None
    for line in layout.splitlines():
        if top := re.match(r"^(tune/[\w]+(?:\.py|/))", line):
            named.add(top.group(1))
            part = top.group(1) if top.group(1).endswith("/") else None
        elif (inner := re.match(r"^  (\w+\.py)\b", line)) and part:
            named.add(part + inner.group(1))
        elif line.strip() and not line.startswith(" "):
            part = None
    return named


def test_the_development_layout_names_every_module_of_the_package_and_no_other():
    present = {f"tune/{path.name}" for path in PACKAGE.glob("*.py")}
    for name in PARTS:
        present.add(f"tune/{name}/")
        present |= {f"tune/{name}/{path.name}" for path in (PACKAGE / name).glob("*.py") if path.name != "__init__.py"}
    named = _layout()
    assert named == present, (sorted(present - named), sorted(named - present))


def test_the_tests_mirror_the_parts_and_no_test_file_is_over_600_lines():
    files = sorted(TESTS.rglob("*.py"))
    for path in files:
        where = path.relative_to(TESTS)
        if len(where.parts) > 1:  # tests/<part>/test_x.py: the tests of that part's modules
            assert len(where.parts) == 2 and (PACKAGE / where.parts[0] / "__init__.py").is_file(), str(where)
        assert len(path.read_text().splitlines()) <= 600, str(where)
    # no __init__.py: each test module imports by its file's name (pytest's prepend mode, "conftest:..." tasks)
    names = [path.name for path in files]
    assert "__init__.py" not in names and len(set(names)) == len(names)


def test_at_most_twelve_modules_sit_at_the_top_and_each_part_says_what_it_owns():
    assert len(list(PACKAGE.glob("*.py"))) <= 12
    for name in PARTS:
        part = importlib.import_module(f"tune.{name}")
        assert part.__doc__ and len(part.__doc__.split()) >= 30, name
        assert "May import" in " ".join(part.__doc__.split()) and isinstance(part.MAY_IMPORT, tuple), name


def _imports(path: Path) -> set[str]:
    """Every tune module a file imports, at its top, inside functions and under TYPE_CHECKING alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tune":
            found |= {f"tune.{a.name}" for a in node.names} if node.module == "tune" else {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tune"}
    return found


def _third_party(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
    return found


@pytest.mark.parametrize("name", PARTS)
def test_a_part_imports_only_what_its_init_allows(name):
    allowed = importlib.import_module(f"tune.{name}").MAY_IMPORT
    own = f"tune.{name}"
    for path in (PACKAGE / name).glob("*.py"):
        for module in _imports(path):
            inside = module == own or module.startswith(own + ".")
            assert inside or any(module == a or module.startswith(a + ".") for a in allowed), (str(path), module)


def test_ray_and_optuna_only_in_the_driver_and_mlflow_only_in_the_tracker_and_the_saved_model():
    where = {"ray": {"driver"}, "optuna": {"driver"}, "mlflow": {"tracker", "predict.py"}}
    for path in PACKAGE.rglob("*.py"):
        home = path.relative_to(PACKAGE).parts[0]
        for library in _third_party(path) & set(where):
            assert home in where[library], (str(path), library)


def test_an_old_module_path_imports_the_same_module_object():
    for old, new in tune.MOVED.items():
        assert importlib.import_module(f"tune.{old}") is importlib.import_module(new), old
        assert sys.modules[f"tune.{old}"] is sys.modules[new] and getattr(tune, old) is sys.modules[new]
        assert sys.modules[new].__spec__.name == new  # the module keeps its own spec under the old name
    from tune.race import race  # the forms users and the docs write

    assert race is importlib.import_module("tune.reporting.race").race
    assert set(tune.MOVED.values()) <= {f"tune.{p}.{m.stem}" for p in PARTS for m in (PACKAGE / p).glob("*.py")}


def test_a_monkeypatch_through_the_old_path_is_seen_by_the_module(monkeypatch):
    from tune.tracker import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("tune.store.default_tracking_uri", lambda cwd=None: "sqlite:////patched.db")
    assert store.tracking_uri(None) == "sqlite:////patched.db"


def test_no_module_of_the_package_is_over_450_lines():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert not {name: n for name, n in sizes.items() if n > 450}
