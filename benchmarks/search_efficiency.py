"""Benchmarks (d) Tune overhead and (e) search efficiency, on the default task, in one run.

    python benchmarks/search_efficiency.py [--seeds 0 1 2] [--num-samples 48]

(e) The full grid over freeze_stop 0-7 x lr {3e-4, 1e-3, 3e-3} (24 trials, every epoch, FIFO) gives the reference
best score. Then the default search (Optuna TPE + ASHA over freeze_stop and a log-uniform lr in [3e-4, 3e-3])
runs once per seed. For each, the compute spent until the first epoch scoring within 1 point of the grid's best:
training epochs (and training seconds) of every trial up to that moment, all trials counted, as a share of the
grid's whole compute. Target: <= 0.30.

(d) For every search above: its span (first trial start to last trial end, from the MLflow child runs) against
the sum of its trials' durations over the concurrency (2 trials at a time here). Target: <= 1.10. Ray's own
start (about 5 s, once) is not in either.

All searches log to a temporary sqlite store; nothing is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run_search.py, beside benchmarks/
import run_search  # noqa: E402

GRID = ["--set", "search.algorithm=grid", "--set", "search.num_samples=1",
        "--set", "space.freeze_stop={type: choice, values: [0, 1, 2, 3, 4, 5, 6, 7]}",
        "--set", "space.lr={type: choice, values: [3.0e-4, 1.0e-3, 3.0e-3]}"]
CONCURRENCY = 2


def _search(root: Path, name: str, args: list[str]) -> list:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        # a storage folder per search: no search loads the frozen-prefix outputs another one computed
        code = run_search.main(["--tracking-uri", uri, "--storage-path", str(root / "ray" / name), "--report-dir",
                                str(root / "reports"), "--set", f"name={name}",
                                "--set", f"search.max_concurrent_trials={CONCURRENCY}", *args])
    if code != 0:
        raise SystemExit(f"search {name} exited {code}")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`freeze_search.role` = 'trial'")
    return [(run, {key: client.get_metric_history(run.info.run_id, key) for key in ("score", "epoch_time_s")})
            for run in runs]


def _events(trials: list) -> list[tuple[int, float, float]]:
    """Every epoch of every trial as (end timestamp ms, score, training seconds), in time order."""
    events = []
    for _, history in trials:
        seconds = {m.step: m.value for m in history["epoch_time_s"]}
        events += [(m.timestamp, m.value, seconds.get(m.step, 0.0)) for m in history["score"]]
    return sorted(events)


def _overhead(trials: list) -> float:
    starts = [run.info.start_time for run, _ in trials]
    ends = [run.info.end_time for run, _ in trials]
    busy = sum(end - start for start, end in zip(starts, ends, strict=True))
    return (max(ends) - min(starts)) / (busy / CONCURRENCY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        grid = _search(Path(root), "grid", GRID)
        grid_events = _events(grid)
        best = max(score for _, score, _ in grid_events)
        grid_epochs, grid_seconds = len(grid_events), sum(s for _, _, s in grid_events)
        print(f"(e) grid: {len(grid)} trials, {grid_epochs} epochs, {grid_seconds:.1f} training s; best score "
              f"{best:.4f}; target: within 0.01 of it")
        print(f"(d) grid: span / (sum of trial durations / {CONCURRENCY}) = {_overhead(grid):.3f}")
        shares = []
        for seed in args.seeds:
            trials = _search(Path(root), f"optuna-asha-{seed}", ["--seed", str(seed), "--num-samples",
                                                                  str(args.num_samples)])
            events = _events(trials)
            reached = next((i for i, (_, score, _) in enumerate(events) if score >= best - 0.01), None)
            total_epochs, total_seconds = len(events), sum(s for _, _, s in events)
            if reached is None:
                print(f"(e) seed {seed}: {len(trials)} trials, {total_epochs} epochs ({total_epochs / grid_epochs:.2f}"
                      f" of the grid): never within 0.01 of the grid's best (its best {max(e[1] for e in events):.4f})")
                shares.append(float("nan"))
            else:
                epochs = reached + 1
                seconds = sum(s for _, _, s in events[:epochs])
                shares.append(epochs / grid_epochs)
                print(f"(e) seed {seed}: reached {events[reached][1]:.4f} after {epochs} epochs = "
                      f"{epochs / grid_epochs:.2f} of the grid's epochs ({seconds / grid_seconds:.2f} of its training "
                      f"seconds); whole search {total_epochs} epochs = {total_epochs / grid_epochs:.2f}, "
                      f"{total_seconds / grid_seconds:.2f} of its seconds")
            print(f"(d) seed {seed}: span / (sum of trial durations / {CONCURRENCY}) = {_overhead(trials):.3f}")
        found = [s for s in shares if s == s]
        if found:
            print(f"(e) median share of the grid's epochs to reach its best within a point: "
                  f"{statistics.median(found):.2f} over {len(found)} of {len(shares)} seeds")


if __name__ == "__main__":
    main()
