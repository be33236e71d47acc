"""The command line as a user meets it: bad input exits 2 with one line and leaves nothing behind (in a real
process), --help and its commands, `layers` (the model's blocks and cut points), and `report` rebuilding the
shared smoke search's report from MLflow alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import run_search

ROOT = Path(__file__).resolve().parents[1]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_search.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)



# In a real process, as a user meets them. The cases that load the task (torch, seconds each) are slow: the same
# errors are tested in process in test_bad_input.py.
@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "train.epochs=0"], "error: train.epochs: got 0 (int); allowed: an integer >= 1"),
    pytest.param(["--set", "space.freeze_stop.high=12"],
                 "error: space.freeze_stop.high: got 12 (out of range); allowed:", marks=pytest.mark.slow),
    pytest.param(["--set", "space.freeze_stop.high=8"],
                 "error: space.freeze_stop: got 8 (freezes every block); allowed:", marks=pytest.mark.slow),
    pytest.param(["--set", "task.name=no_such.module:task"],
                 "error: task.name: got 'no_such.module:task' (ModuleNotFoundError", marks=pytest.mark.slow),
    (["--space", "missing.yaml"], "error: --space: got 'missing.yaml' (no such file)"),
    (["--num-samples", "0"], "error: search.num_samples: got 0 (int); allowed: an integer >= 1"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing_behind(tmp_path, args, expected):
    result = _cli(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no Ray results: nothing was started



def test_help_lists_the_options(tmp_path):
    result = _cli(tmp_path, "--help")
    assert result.returncode == 0
    for option in ("--space", "--num-samples", "--set", "--seed", "--tracking-uri", "--storage-path", "--smoke-test"):
        assert option in result.stdout



def test_help_shows_the_commands_in_its_usage(capsys):
    with pytest.raises(SystemExit) as exited:
        run_search.main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out.split("\n\n")[0]  # the usage lines, before the description
    for command in ("report", "layers", "submit"):
        assert f"freeze-search {command} " in usage, usage



def test_layers_lists_the_default_models_blocks_and_cut_points(capsys):
    assert run_search.main(["layers"]) == 0
    out = capsys.readouterr().out
    assert "--- freeze: 6 (backbone)" in out and "--- freeze: 7 (all_but_head)" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 6]
    assert [row[1] for row in rows] == ["stem", "conv1", "conv2", "conv3", "conv4", "conv5", "neck", "head"]
    assert rows[-1][-1] == "100.0%"
    assert sum(int(row[3].replace(",", "")) for row in rows) == 152_570



def test_layers_opens_with_a_header_naming_the_task_and_its_options(capsys):
    assert run_search.main(["layers", "--set", "task.options.labels_per_class=5"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "task digits, options: labels_per_class=5, val_size=1000, test_size=500"



def test_report_command_rebuilds_the_report_from_mlflow_alone(default_smoke, tmp_path, capsys):
    _, uri, _ = default_smoke
    code = run_search.main(["report", "--tracking-uri", uri, "--report-dir", str(tmp_path), "--tolerance", "0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Frontier over score (max), epoch_time_s (min), peak_mem_mb (min)" in out and "Recommendation:" in out
    [folder] = list(tmp_path.iterdir())
    assert {p.name for p in folder.iterdir()} >= {"report.txt", "summary.md", "frontier.png"}
    assert run_search.main(["report", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "error: --experiment: got 'nope' (no experiment 'nope'" in capsys.readouterr().err
