"""Work survives kills: a trial's worker killed with SIGKILL resumes from its checkpoint; a driver killed with
SIGKILL or stopped with Ctrl-C is resumed with --resume into the same parent run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TESTS_PATH
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]

# head_init library: no linear probe fitted in the driver, whose forward passes would spend the slow task's gate
# tokens and time; these tests are about stopping and resuming, on a random-init toy
SLOW_SPACE = """
name: slow
task: {{name: "conftest:make_slow_task", options: {{seconds_per_epoch: {seconds}{gate}}}}}
train: {{epochs: {epochs}, batch_size: 8, lr: 0.01, head_init: library}}
space: {{freeze_stop: {{type: int, low: 0, high: 3}}}}
search: {{num_samples: {samples}, scheduler: fifo, max_concurrent_trials: 2}}
report: {{confirm_seeds: 0, tolerance: 1.0}}
"""


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_PATH, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), "--space", str(tmp_path / "space.yaml"),
                             "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *extra],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _runs(tmp_path: Path) -> list:
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name("slow")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _trials(tmp_path: Path, status: str | None = None) -> list:
    try:
        runs = _runs(tmp_path)
    except Exception:  # the store is being created by the search
        return []
    return [r for r in runs if r.data.tags.get("freeze_search.role") == "trial"
            and (status is None or r.info.status == status)]


def _check_complete(tmp_path: Path, samples: int, epochs: int) -> None:
    runs = _runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("freeze_search.role") == "search"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run
    trials = [r for r in runs if r.data.tags.get("freeze_search.role") == "trial"]
    assert sorted(r.data.tags["ray.trial_id"] for r in trials) == sorted({r.data.tags["ray.trial_id"] for r in trials})
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == samples  # the search completed every sample
    client = _client(tmp_path)
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "score")]
        assert len(steps) == len(set(steps))  # no epoch logged twice
        if run.info.status == "FINISHED":
            assert sorted(steps) == list(range(1, epochs + 1))  # none missing
        else:  # a trial the driver started after Tune's last snapshot: lost with the driver, and said so
            assert run.info.status == "KILLED"
            assert run.data.tags["killed_because"] in ("the driver stopped before this trial ended",
                                                       "interrupted (Ctrl-C)")


def _space(tmp_path: Path, seconds: float, epochs: int, samples: int, free: int | None = None,
           hold_at: int | None = None) -> None:
    """The slow task's space; with ``free``, only that many trials run freely and the rest wait until the test
    opens the gate (_open_gate); with ``hold_at``, every trial waits at that epoch's validation until then: the
    search stops at a known point, whatever the machine's speed."""
    gate = ""
    if free is not None:
        tokens = tmp_path / "tokens"
        tokens.mkdir()
        for i in range(free):
            (tokens / str(i)).touch()
        gate = f", tokens: '{tokens}'"
    if hold_at is not None:
        gate += f", hold_at: {hold_at}"
    if gate:
        gate += f", gate: '{tmp_path / 'gate'}'"
    (tmp_path / "space.yaml").write_text(SLOW_SPACE.format(seconds=seconds, epochs=epochs, samples=samples,
                                                           gate=gate))


def _open_gate(tmp_path: Path) -> None:
    (tmp_path / "gate").touch()


@pytest.mark.slow
def test_a_trial_worker_killed_with_sigkill_resumes_from_its_checkpoint(tmp_path):
    _space(tmp_path, seconds=0.2, epochs=6, samples=2, hold_at=3)  # each trial waits in epoch 3 for the gate
    driver = _start(tmp_path)
    try:
        def trial_held_in_epoch_3():
            for run in _trials(tmp_path, "RUNNING"):
                if "pid" in run.data.tags and run.data.metrics.get("epoch", 0) == 2:
                    return run
            return None

        victim = _wait_for(trial_held_in_epoch_3, 180, "a trial held in epoch 3")
        os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)
        _open_gate(tmp_path)  # the other trial and the restarted one go on
        output, _ = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, output
    _check_complete(tmp_path, samples=2, epochs=6)
    resumed = {r.info.run_id: int(r.data.tags["resumed_at_epoch"]) for r in _trials(tmp_path)
               if "resumed_at_epoch" in r.data.tags}
    # the killed worker's trial went on from its last checkpoint, not from epoch 1: MLflow showed epoch `seen`, so
    # the checkpoint of epoch seen - 1 at least was registered (the one of epoch `seen` may not be yet: Tune
    # registers it by a save call to the worker after the result's callbacks, and the kill can land in between)
    seen = int(victim.data.metrics["epoch"])
    assert resumed.get(victim.info.run_id, 0) >= seen >= 2, (seen, resumed, output)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_a_stopped_driver_is_resumed_into_the_same_parent_run(tmp_path, how):
    _space(tmp_path, seconds=0.3, epochs=3, samples=6, free=2)  # the others wait for the gate
    driver = _start(tmp_path)
    try:
        _wait_for(lambda: len(_trials(tmp_path, "FINISHED")) >= 2, 180, "two finished trials")
        driver.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
        output, _ = driver.communicate(timeout=120)
    finally:
        driver.kill()
    finished_before = {r.data.tags["ray.trial_id"]: r.info.end_time for r in _trials(tmp_path, "FINISHED")}
    if how == "ctrl-c":
        assert driver.returncode == 130, output
        assert "--resume" in output
        [parent] = [r for r in _runs(tmp_path) if r.data.tags.get("freeze_search.role") == "search"]
        assert parent.info.status == "KILLED"
        assert not _trials(tmp_path, "RUNNING")  # open runs were marked KILLED
    assert len(finished_before) == 2

    _open_gate(tmp_path)
    resumed = _start(tmp_path, "--resume")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    _check_complete(tmp_path, samples=6, epochs=3)
    after = {r.data.tags["ray.trial_id"]: r.info.end_time for r in _trials(tmp_path)}
    for trial_id, end_time in finished_before.items():
        assert after[trial_id] == end_time  # finished trials were not run again


def test_resume_without_an_unfinished_search_is_bad_input(tmp_path, capsys):
    import run_search

    _space(tmp_path, seconds=0.0, epochs=1, samples=1)
    code = run_search.main(["--space", str(tmp_path / "space.yaml"), "--tracking-uri",
                            f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", str(tmp_path / "ray"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: --resume: got 'slow' (no experiment 'slow'")
    assert not (tmp_path / "ray").exists()  # refused before the storage folder was made


@pytest.mark.slow
def test_a_driver_stopped_during_confirm_resumes_it_without_repeating_or_counting_partial_runs(tmp_path):
    from tune.reporting import analysis
    from tune.tracker import tracking

    _space(tmp_path, seconds=0.3, epochs=3, samples=1, free=4)  # the 3 search trials and 1 confirmation run
    # a grid: 3 distinct ranges; the tolerance of 1.0 puts all of them near the best, so that there are 2 candidates
    space = tmp_path / "space.yaml"
    # (with nothing frozen the tiny task learns, frozen it stays at chance: the scores tell the ranges apart)
    space.write_text(space.read_text().replace("{type: int, low: 0, high: 3}", "{type: choice, values: [0, 1, 2]}")
                     .replace("scheduler: fifo", "algorithm: grid, scheduler: fifo"))
    # 2 candidates x seeds 1, 2, no further rounds
    confirm = ("--confirm", "2", "--confirm-top", "2", "--set", "report.confirm_max_seeds=2")

    def confirm_runs(status: str | None = None) -> list:
        return [r for r in _trials(tmp_path, status) if r.data.tags.get("phase") == "confirm"]

    driver = _start(tmp_path, *confirm)
    try:
        _wait_for(lambda: confirm_runs("FINISHED"), 240, "a finished confirmation run")
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, output
    before = {r.info.run_id: r.info.end_time for r in confirm_runs("FINISHED")}
    assert len(before) == 1, output
    assert confirm_runs("KILLED")  # stopped part way: it must not count

    _open_gate(tmp_path)
    resumed = _start(tmp_path, "--resume", *confirm)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"({len(before)} runs finished before the resume)" in output
    finished = confirm_runs("FINISHED")
    pairs = sorted((r.data.tags["candidate"], r.data.params["seed"]) for r in finished)
    assert len(pairs) == 4 and len(set(pairs)) == 4  # every candidate and seed once: none repeated, none missing
    assert {seed for _, seed in pairs} == {"1", "2"}
    after = {r.info.run_id: r.info.end_time for r in finished}
    assert all(after.get(run_id) == end for run_id, end in before.items())  # not run again
    assert {r.info.status for r in confirm_runs()} <= {"FINISHED", "KILLED"}

    [parent] = [r for r in _runs(tmp_path) if r.data.tags.get("freeze_search.role") == "search"]
    assert parent.info.status == "FINISHED"
    records = tracking.fetch_trials(f"sqlite:///{tmp_path / 'mlflow.db'}", parent.info.run_id)
    decision = analysis.confirmed(analysis.summarise(records), tolerance=0.01, cost="epoch_time_s")
    assert sorted(len(c.scores) for c in decision.candidates) == [2, 2]  # the runs killed part way are not counted
