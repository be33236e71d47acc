"""What the driver hears from Ray Tune about each trial (tune.driver.events): the stop when the first trials fail alike,
judged by hand (tune.driver.events.BadInput) and in a real search on Ray that exits 2 with one line."""

from __future__ import annotations

import pytest
from conftest import _runs, _search

from tune.errors import ConfigError


def _bad(problem: str = "FileNotFoundError: mydata") -> ConfigError:
    return ConfigError("task.options", {"data": "mydata"}, "options that point at readable data", problem=problem)



@pytest.mark.parametrize(("outcomes", "total", "stops"), [
    ([_bad(), _bad()], 4, True),  # the first two trials met the same bad input
    ([_bad()], 1, True),  # a search of one trial
    ([_bad()], 4, False),  # one trial alone may be its sampled params
    ([None, _bad(), _bad()], 4, False),  # a trial reported an epoch first: the input is fine
    ([_bad("a"), _bad("b")], 4, False),  # two different problems
    ([RuntimeError("out of memory"), _bad()], 4, False),  # a crash is not bad input
    ([RuntimeError("out of memory at epoch 1"), RuntimeError("out of memory at epoch 1")], 4, False),  # the config's
    ([MemoryError("cannot hold a batch"), MemoryError("cannot hold a batch")], 4, False),
    ([RuntimeError("boom"), RuntimeError("bang")], 4, False),  # two different crashes
])
def test_the_search_stops_when_its_first_trials_meet_the_same_config_error(outcomes, total, stops):
    import copy
    import pickle

    from tune.driver import events

    verdict = events.BadInput(total)
    # Tune copies the run config's stopper and callbacks: in this process every copy is the one object
    assert copy.deepcopy(verdict) is verdict and pickle.loads(pickle.dumps(verdict)) is verdict
    for index, outcome in enumerate(outcomes):
        verdict.outcome(f"trial{index}", outcome)
    assert verdict.stop_all() is stops
    assert (str(verdict.error) == str(_bad())) if stops else verdict.error is None



def test_the_search_stops_when_its_first_trials_fail_with_the_same_exception_of_any_kind():
    from tune.driver import events

    verdict = events.BadInput(4)
    missing = "[Errno 2] No such file or directory: 'pretrained.pt'"
    for index in range(2):
        verdict.outcome(f"trial{index}", FileNotFoundError(2, "No such file or directory", "pretrained.pt"))
    assert verdict.stop_all()
    assert str(verdict.error) == (f"trials: got {'FileNotFoundError: ' + missing!r} (the first trials failed alike; "
                                  "the search stopped); allowed: a task whose trials run where the driver's does "
                                  "(docs/your-task.md#what-a-trial-sees)")


@pytest.mark.slow  # a real search whose trials all fail: about 20 s with Ray's start
def test_trials_that_all_fail_alike_stop_the_search_with_one_line_and_exit_2(ray_runtime, tmp_path, monkeypatch,
                                                                           capsys):
    import os

    import torch
    from conftest import make_tiny_task

    torch.save(make_tiny_task().train_data, tmp_path / "mydata")
    monkeypatch.chdir(tmp_path)
    # a bare 'mydata' the task does not declare a path stays a word: the trials find it because they work in the
    # driver's folder; then the user's loss fails in each of them alike
    code, uri = _search(tmp_path, "--set", "task.name=conftest:make_crashing_file_task",
                        "--set", f"task.options={{source: mydata, driver_pid: {os.getpid()}}}",
                        "--set", "space.freeze_stop.high=3", "--set", "search.num_samples=8")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(
        "error: trials: got \"RuntimeError: the user's loss cannot run here\" (the first trials failed alike")
    parent, children = _runs(uri, "digits_freeze")
    assert parent.info.status == "FAILED" and parent.data.tags["failure_reason"] == lines[0].removeprefix("error: ")
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 2 and all(c.data.tags["failure_reason"] == "RuntimeError: the user's loss cannot run here"
                                    for c in failed)
    assert len(children) < 8 and {c.info.status for c in children} <= {"FAILED", "KILLED"}  # not all 8 ran into it
