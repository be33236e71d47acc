"""The tracking store (tune.tracker.store): searches started at once on a new sqlite store, in separate processes,
create it once and share one experiment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# Each worker imports tune.tracker.tracking once, then opens a tracker on every store path it reads, as a search's
# driver does first: the workers get each path at the same moment, so they race to create the store's tables.
_OPEN_STORE = """
import sys
from tune.tracker.tracking import SearchTracker

print("ready", flush=True)
for line in sys.stdin:
    try:
        tracker = SearchTracker("sqlite:///" + line.strip(), "at-once")
        print("ok", tracker.experiment_id, flush=True)
    except Exception as err:
        print("failed", type(err).__name__, " ".join(str(err).split())[:200], flush=True)
"""



@pytest.mark.slow  # three processes importing MLflow at once, three times: about 10-30 s
def test_searches_started_at_once_on_a_new_sqlite_store_create_it_once_and_share_the_experiment(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    workers = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env, cwd=tmp_path) for _ in range(3)]
    try:
        assert all(worker.stdout.readline().strip() == "ready" for worker in workers)
        for attempt in range(3):  # a new store each time
            database = tmp_path / f"m{attempt}.db"
            for worker in workers:
                worker.stdin.write(f"{database}\n")
            for worker in workers:
                worker.stdin.flush()
            answers = [worker.stdout.readline().split(maxsplit=1) for worker in workers]
            assert [answer[0] for answer in answers] == ["ok"] * 3, answers
            assert len({answer[1] for answer in answers}) == 1, answers  # one experiment, not one each
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(timeout=60)
