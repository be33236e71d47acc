"""Every command in the bash blocks of README.md and docs/*.md runs as written on this machine, so that the
documentation cannot drift from the code: searches with --smoke-test added (a few trials of 2 epochs; the command's
own --set values still win), the rest as they are. A command whose data or cluster is not here must fail at once,
with one line and exit 2. The README's Python example runs too, smoke-sized."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
pytestmark = pytest.mark.slow

# What a bash block holds that a test here does not run, and where it is run instead.
ELSEWHERE = {
    "python3 -m venv": "a set-up step: .ci/run makes the venv from a clean clone",
    ". .venv": "a set-up step: .ci/run makes the venv from a clean clone",
    "pip install": "a set-up step: .ci/run makes the venv from a clean clone",
    "python -m pytest": "the tests themselves: .ci/run runs them",
    "mlflow ui": "a server: tracker/test_tracking.py::test_mlflow_ui_command_serves_the_runs_of_a_smoke_search runs it",
    "python run_search.py submit": "needs a cluster: driver/test_cluster.py submits to a real two-node one",
    "freeze-search submit": "needs a cluster: driver/test_cluster.py submits to a real two-node one",
    "python run_search.py --address": "needs a cluster: driver/test_cluster.py runs searches on a real two-node one",
    "freeze-search --address": "needs a cluster: driver/test_cluster.py runs searches on a real two-node one",
    "freeze-search --resume": "needs a search that was stopped: test_fault_tolerance.py kills one and resumes",
    "ray start": "starts a cluster node: driver/test_cluster.py starts a real two-node cluster",
    "srun": "needs SLURM, which is not here",
    "python run_search.py --resume": "needs a search that was stopped: test_fault_tolerance.py kills one and resumes",
    "python docs/mlflow_view.py": "docs tooling: needs Debian's chromium and Playwright, not dependencies",
}
# Data a command uses that the command before it in the same page writes.
MADE_BEFORE = {"shapes/shapes.yaml": ["tune.tasks.shapes", "shapes"],
               "data=digits_png": ["tune.tasks.image", "example", "digits_png"]}
# Placeholders for what only the user has: the command must refuse them at once (exit 2, one line).
NOT_HERE = ("/data/", "/models/")
# Bad input shown on purpose: the command must refuse it with this one line's start (exit 2).
REFUSED = {"search.num_samples=0": "error: search.num_samples: got 0"}


def doc_commands(path: Path) -> list[str]:
    """Every command of every bash block of one page: continuation lines joined, comments dropped, ``a && b``
    split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            commands += [part.strip() for part in line.split(" && ") if part.strip()]
    return commands


def readme_commands() -> list[str]:
    return doc_commands(ROOT / "README.md")


def _needs_yolo(command: str) -> bool:
    return "yolo" in command or "tune.tasks.shapes" in command


def _cases() -> list:
    """(page, command) for every command of every page; a command shown on several pages runs once, on the first."""
    cases, seen = [], set()
    for path in DOCS:
        for command in doc_commands(path):
            if command in seen:
                continue
            seen.add(command)
            page = path.relative_to(ROOT).as_posix()
            cases.append(pytest.param(page, command, id=f"{page}: {command[:80]}",
                                      marks=[pytest.mark.yolo] if _needs_yolo(command) else []))
    return cases


def test_the_readme_shows_the_two_set_up_commands_and_the_main_job():
    commands = readme_commands()
    assert "python run_search.py" in commands and "python -m pytest" in commands
    assert sum(command.startswith("pip install") for command in commands) >= 2


def test_every_docs_page_is_linked_from_the_documentation_index():
    index = (ROOT / "docs" / "README.md").read_text()
    for path in DOCS[1:]:
        if path.name != "README.md":
            assert f"({path.name})" in index or f"({path.name}#" in index, path.name


def _env() -> dict[str, str]:
    """The checkout's own ``tune`` first, whatever the venv has installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize(("page", "command"), _cases())
def test_each_documented_command_runs_here_as_written(page, command, tmp_path):
    for prefix, reason in ELSEWHERE.items():
        if command.startswith(prefix):
            pytest.skip(reason)
    argv = shlex.split(command)
    if argv[0] == "freeze-search":  # the console command is tune.cli's main: run it from this checkout
        argv = ["python", "-m", "tune.cli", *argv[1:]]
    assert argv[0] == "python", (page, command)
    if argv[1:2] == ["run_search.py"]:
        argv[1] = str(ROOT / "run_search.py")
    command_args = argv[2:] if argv[1] != "-m" else argv[3:]
    if argv[1:2] == ["-m"] and argv[2] != "tune.cli":
        command_args = None  # a module's own command (tune.tasks.shapes, tune.pretrained, ...)
    if command_args is not None and (not command_args or command_args[0].startswith("-")):  # a search
        argv.insert(len(argv) - len(command_args), "--smoke-test")
    (tmp_path / "search_spaces").symlink_to(ROOT / "search_spaces")  # the pages' relative paths
    for needed, made_by in MADE_BEFORE.items():  # data the page makes with the command before
        if needed in command:
            subprocess.run([sys.executable, "-m", *made_by], cwd=tmp_path, check=True, capture_output=True,
                           timeout=120, env=_env())
    result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=_env())
    refusal = next((line for bad, line in REFUSED.items() if bad in command), None)
    if refusal is None and any(placeholder in command for placeholder in NOT_HERE):
        refusal = "error: task.options.data"
    if refusal is not None:
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(refusal), result.stderr
        return
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    if "--smoke-test" in argv:  # a search's console: its own lines, without Tune's and Optuna's (--verbose)
        assert "[1/" in result.stdout and "best so far" in result.stdout
        for noise in ("TensorBoard", "A new study created", "Configuration for experiment", "Saving pytorch model",
                      "Token authentication is enabled", "Started monitoring system metrics"):
            assert noise not in result.stdout + result.stderr, noise


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


# Forces every FreezeSearch of the example to a smoke-sized search (4 trials of 2 epochs, a short race).
SMOKE_PRELUDE = '''
import tune

class _SmokeSearch(tune.FreezeSearch):
    def __init__(self, *args, **kwargs):
        kwargs["smoke_test"] = True
        super().__init__(*args, **kwargs)

tune.FreezeSearch = _SmokeSearch
'''


@pytest.mark.parametrize("block", readme_python_blocks(), ids=lambda block: block.splitlines()[0][:60])
def test_the_readme_python_example_runs_smoke_sized(block, tmp_path):
    assert "tune.FreezeSearch" in block
    result = subprocess.run([sys.executable, "-c", SMOKE_PRELUDE + block], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900, env=_env())
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Recommendation" in result.stdout or "recommends nothing" in result.stdout, result.stdout[-2000:]
