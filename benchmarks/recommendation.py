"""Benchmark: where the default search's recommendation lands in the exhaustive grid of the default task.

    python benchmarks/recommendation.py [--runs 3] [--lrs 3e-4 6e-4 1.2e-3 2.4e-3] [--seeds 1 2 3]

The grid: every freeze depth of the default space (digits_freeze.yaml) x the learning rates x the seeds, all
epochs, no early stopping and no confirmation (one `run_search.py` grid search). Each trial is taken at its best
epoch, as the report takes it; a depth's grid mean is the mean over the seeds at its best learning rate, with its
standard error. Beside it, the default search (`python run_search.py`, with its default confirmation) runs
--runs times with different seeds (`--seed 1`, `--seed 2`, ...), each in its own MLflow store. For each run the
script prints the recommended range, its grid mean against the grid's best range's (the gap in standard errors
of the difference), whether it obeys its own rule by the grid's means (within the tolerance of the grid's best,
up to 2 standard errors), whether the report's 95 % interval for it covers its grid mean, its test score against
its validation score, and its cost against the grid's (wall time and trial-epochs). Everything through the CLI,
as a user would run it; the ratios are measured in this one run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tune import report, tracking  # noqa: E402


def search(folder: Path, experiment: str, *args: str
           ) -> tuple[tracking.SearchRecord, list[tracking.TrialRecord], dict[str, float], float]:
    """One `run_search.py` search in ``folder`` (its own MLflow store, Ray storage and reports); its parent, its
    trials, the parent's metrics and its wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run_search.py"), "--tracking-uri", uri, "--storage-path",
                    str(folder / "ray"), "--report-dir", str(folder / "reports"), *args], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    record = tracking.find_search(uri, experiment)
    metrics = MlflowClient(tracking_uri=uri).get_run(record.run_id).data.metrics
    return record, tracking.fetch_trials(uri, record.run_id), metrics, wall


def grid_space(folder: Path, lrs: list[float], seeds: list[int]) -> Path:
    space = yaml.safe_load((ROOT / "search_spaces" / "digits_freeze.yaml").read_text())
    space["name"] = "digits_grid"
    space["space"] = {"freeze_stop": {"type": "choice", "values": list(range(8))},
                      "lr": {"type": "choice", "values": lrs}, "seed": {"type": "choice", "values": seeds}}
    space["search"].update(algorithm="grid", num_samples=1, scheduler="fifo")
    space["report"] = {"confirm_seeds": 0}
    path = folder / "digits_grid.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def grid_means(trials: list[tracking.TrialRecord]) -> dict[str, tuple[float, float, str]]:
    """Each freeze range's (mean, standard error, learning rate) at its best learning rate."""
    by: dict[tuple[str, str], list[float]] = {}
    for result in report.summarise(trials):
        by.setdefault((result.freeze_range, result.params["lr"]), []).append(result.score)
    best: dict[str, tuple[float, float, str]] = {}
    for (freeze_range, lr), scores in by.items():
        mean = statistics.fmean(scores)
        se = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else math.nan
        if freeze_range not in best or mean > best[freeze_range][0]:
            best[freeze_range] = (mean, se, lr)
    return best


def epochs_of(trials: list[tracking.TrialRecord]) -> int:
    return sum(len(t.history.get("score", [])) for t in trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="default searches, with seeds 1..N (default 3)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 6e-4, 1.2e-3, 2.4e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the grid's seeds per point")
    parser.add_argument("--tolerance", type=float, default=0.01, help="the default space's report.tolerance")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        space = grid_space(root, args.lrs, args.seeds)
        _, grid, _, grid_wall = search(root / "grid", "digits_grid", "--space", str(space))
        means = grid_means(grid)
        ordered = sorted(means, key=lambda r: int(r.strip("[)").split(",")[1]))
        best = max(means, key=lambda r: means[r][0])
        print(f"grid: {len(grid)} trials ({len(ordered)} depths x {len(args.lrs)} lrs x {len(args.seeds)} seeds, "
              f"10 epochs, no early stopping), {grid_wall:.0f} s, {epochs_of(grid)} trial-epochs")
        print("  " + "  ".join(f"{r} {means[r][0]:.3f}±{means[r][1]:.3f}" for r in ordered))
        print(f"  best range {best}: {means[best][0]:.4f} (lr {means[best][2]})")
        header = ("run", "recommended", "grid mean", "gap/SE", "obeys", "interval", "covers", "val", "test",
                  "wall s", "of grid", "epochs", "of grid")
        rows = []
        for run in range(1, args.runs + 1):
            parent, trials, metrics, wall = search(root / f"default{run}", "digits_freeze", "--seed", str(run))
            chosen = parent.tags.get("recommended_freeze_range")
            low, high = metrics.get("recommended_score_low", math.nan), metrics.get("recommended_score_high",
                                                                                        math.nan)
            if chosen is None or chosen not in means:
                rows.append((str(run), str(chosen), *(["-"] * 11)))
                continue
            mean, se = means[chosen][:2]
            spread = math.sqrt(se ** 2 + means[best][1] ** 2)
            gap = (means[best][0] - mean) / spread if spread else math.inf
            obeys = means[best][0] - mean <= args.tolerance + 2 * spread
            covers = low <= mean <= high
            rows.append((str(run), chosen, f"{mean:.4f}", f"{gap:.1f}", "yes" if obeys else "NO",
                         f"{low:.3f}-{high:.3f}", "yes" if covers else "NO",
                         f"{metrics.get('recommended_score', math.nan):.4f}",
                         f"{metrics.get('test_score', math.nan):.4f}",
                         f"{wall:.0f}", f"{wall / grid_wall:.2f}", str(epochs_of(trials)),
                         f"{epochs_of(trials) / epochs_of(grid):.2f}"))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
