"""Every command in the README's bash blocks runs as written on this machine, so that the README cannot drift from
the code: searches with --smoke-test added (a few trials of 2 epochs; the command's own --set values still win), the
rest as they are. A command whose data or cluster is not here must fail at once, with one line and exit 2."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# What a bash block holds that a test here does not run, and where it is run instead.
ELSEWHERE = {
    "python3 -m venv": "a set-up step: .ci/run makes the venv from a clean clone",
    ". .venv": "a set-up step: .ci/run makes the venv from a clean clone",
    "pip install": "a set-up step: .ci/run makes the venv from a clean clone",
    "python -m pytest": "the tests themselves: .ci/run runs them",
    "mlflow ui": "a server: test_search.py::test_mlflow_ui_command_serves_the_runs_of_a_smoke_search runs it",
    "python run_search.py submit": "needs a cluster: test_cluster.py submits to a real two-node one",
}
# Data a README command uses that the command before it in the README writes.
MADE_BEFORE = {"shapes/shapes.yaml": ["tune.tasks.shapes", "shapes"],
               "data=digits_png": ["tune.tasks.image", "example", "digits_png"]}
# Placeholders for what only the user has: the command must refuse them at once (exit 2, one line).
NOT_HERE = ("/data/", "/models/")


def readme_commands() -> list[tuple[str, str]]:
    """(the bash block's first line, one command) for every command of every bash block; continuation lines are
    joined, comments dropped, ``a && b`` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            commands += [(block.splitlines()[0], part.strip()) for part in line.split(" && ") if part.strip()]
    return commands


def _needs_yolo(command: str) -> bool:
    return "yolo" in command or "tune.tasks.shapes" in command


CASES = [pytest.param(command, id=command[:90], marks=[pytest.mark.yolo] if _needs_yolo(command) else [])
         for _, command in readme_commands()]


def test_the_readme_shows_the_two_set_up_commands_and_the_main_job():
    commands = [command for _, command in readme_commands()]
    assert "python run_search.py" in commands and "python -m pytest" in commands
    assert sum(command.startswith("pip install") for command in commands) >= 2


@pytest.mark.parametrize("command", CASES)
def test_each_readme_command_runs_here_as_written(command, tmp_path):
    for prefix, reason in ELSEWHERE.items():
        if command.startswith(prefix):
            pytest.skip(reason)
    argv = shlex.split(command)
    assert argv[0] == "python", command
    if argv[1:2] == ["run_search.py"]:
        argv[1] = str(ROOT / "run_search.py")
        if len(argv) == 2 or argv[2].startswith("-"):  # a search, not layers / report
            argv.insert(2, "--smoke-test")
    (tmp_path / "search_spaces").symlink_to(ROOT / "search_spaces")  # the README's relative paths
    for needed, made_by in MADE_BEFORE.items():  # data the README makes with the command before
        if needed in command:
            subprocess.run([sys.executable, "-m", *made_by], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if any(placeholder in command for placeholder in NOT_HERE):
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: task.options.data")
        return
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    if "--smoke-test" in argv:  # a search's console: its own lines, without Tune's and Optuna's (--verbose)
        assert "[1/" in result.stdout and "best so far" in result.stdout
        for noise in ("TensorBoard", "A new study created", "Configuration for experiment", "Saving pytorch model",
                      "Token authentication is enabled", "Started monitoring system metrics"):
            assert noise not in result.stdout + result.stderr, noise
