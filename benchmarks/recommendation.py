"""Benchmark: where the default search's recommendation lands in the exhaustive grid of the default task, and what
it costs.

    python benchmarks/recommendation.py [--runs 10] [--set KEY=VALUE ...] [--grid-store DIR]

The grid: every freeze depth of the default space (digits_freeze.yaml) x the learning rates x the seeds, all
epochs, no early stopping and no confirmation (one `run_search.py` grid search). Each trial is taken at its best
epoch, as the report takes it; a depth's grid mean is the mean over the seeds at its best learning rate, with its
standard error. Beside it, the default search (`python run_search.py` with its confirmation race; `--set` passes
overrides to it) runs --runs times with search seeds 1..N, each in its own MLflow store. For each run: the
recommended range, its grid mean, whether that is within the tolerance of the grid's best mean (the issue's
criterion, by the grid's means), the race's rounds and how it ended (proven, budget, futile), the paired and
unpaired standard errors of the candidates' gaps to the highest mean (their medians), its confirmed validation mean
and test score, and the trial-epochs of the search and of the confirmation as a share of the grid's. Then the
totals: how many runs landed within, the mean and max compute share, how many races were proven (and how many of
those landed outside the tolerance by the grid), the median paired / unpaired ratio. Everything through the CLI, as
a user would run it; the ratios are measured in this one run.
--grid-store DIR keeps the grid's MLflow store there and reuses it on the next call (the grid does not change with
the default search's settings).
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

from tune.reporting import analysis  # noqa: E402
from tune.reporting.records import SearchRecord, TrialRecord  # noqa: E402
from tune.tracker import tracking  # noqa: E402


def search(folder: Path, experiment: str, *args: str
           ) -> tuple[SearchRecord, list[TrialRecord], dict[str, float], float]:
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


def grid_means(trials: list[TrialRecord]) -> dict[str, tuple[float, float, str]]:
    """Each freeze range's (mean, standard error, learning rate) at its best learning rate."""
    by: dict[tuple[str, str], list[float]] = {}
    for result in analysis.summarise(trials):
        by.setdefault((result.freeze_range, result.params["lr"]), []).append(result.score)
    best: dict[str, tuple[float, float, str]] = {}
    for (freeze_range, lr), scores in by.items():
        mean = statistics.fmean(scores)
        se = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else math.nan
        if freeze_range not in best or mean > best[freeze_range][0]:
            best[freeze_range] = (mean, se, lr)
    return best


def epochs_of(trials: list[TrialRecord], phase: str | None = None) -> int:
    """Trial-epochs trained (epoch 0, a probe-started head's start, is no training), of one phase if given."""
    return sum(sum(1 for step, _ in t.history.get("score", []) if step > 0) for t in trials
               if phase is None or t.tags.get("phase", "search") == phase)


def race_figures(parent: SearchRecord, trials: list[TrialRecord], tolerance: float) -> tuple[int, str, float, float]:
    """The confirmation race of one search: rounds, how it ended (the parent's tag race_ended: proven, budget,
    futile), the median paired and unpaired standard error of the candidates' gaps to the highest mean."""
    confirmation = [r for r in analysis.summarise(trials) if r.candidate]
    decision = analysis.confirmed(confirmation, tolerance, "epoch_time_s", budget=parent.report.seed_budget)
    if decision is None:
        return 0, "none", math.nan, math.nan
    rounds = max(int(t.tags.get("round", 1)) for t in trials if t.tags.get("phase") == "confirm")
    compared = [c for name, c in decision.comparisons.items() if name != decision.best.name and c.seeds > 1]
    paired = statistics.median(c.paired_se for c in compared) if compared else math.nan
    unpaired = statistics.median(c.unpaired_se for c in compared) if compared else math.nan
    return rounds, parent.tags.get("race_ended", decision.ended), paired, unpaired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="default searches, with seeds 1..N (default 10)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 6e-4, 1.2e-3, 2.4e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="the grid's seeds per point")
    parser.add_argument("--tolerance", type=float, default=0.01, help="the default space's report.tolerance")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the default searches (repeatable)")
    parser.add_argument("--grid-store", type=Path, help="keep (or reuse) the grid's MLflow store in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        grid_folder = args.grid_store.resolve() if args.grid_store else root / "grid"
        if args.grid_store and (grid_folder / "mlflow.db").is_file():
            uri = f"sqlite:///{grid_folder / 'mlflow.db'}"
            record = tracking.find_search(uri, "digits_grid")
            grid, grid_wall = tracking.fetch_trials(uri, record.run_id), math.nan
        else:
            space = grid_space(root, args.lrs, args.seeds)
            _, grid, _, grid_wall = search(grid_folder, "digits_grid", "--space", str(space))
        means = grid_means(grid)
        ordered = sorted(means, key=lambda r: int(r.strip("[)").split(",")[1]))
        best = max(means, key=lambda r: means[r][0])
        grid_epochs = epochs_of(grid)
        print(f"grid: {len(grid)} trials ({len(ordered)} depths x {len(args.lrs)} lrs x {len(args.seeds)} seeds, "
              f"10 epochs, no early stopping), {grid_wall:.0f} s, {grid_epochs} trial-epochs")
        print("  " + "  ".join(f"{r} {means[r][0]:.3f}±{means[r][1]:.3f}" for r in ordered))
        within = {r for r in means if means[r][0] >= means[best][0] - args.tolerance - 1e-12}
        print(f"  best range {best}: {means[best][0]:.4f} (lr {means[best][2]}); within {args.tolerance:g} of it: "
              + ", ".join(sorted(within, key=ordered.index)))
        overrides = [part for pair in args.set for part in ("--set", pair)]
        if overrides:
            print("default searches with " + " ".join(args.set))
        header = ("run", "recommended", "grid mean", "within", "rounds", "race", "paired se", "unpaired se",
                  "val", "test", "wall s", "search ep", "confirm ep", "of grid")
        rows, shares, landed, proven, proven_wrong, ratios = [], [], 0, 0, 0, []
        for run in range(1, args.runs + 1):
            parent, trials, metrics, wall = search(root / f"default{run}", "digits_freeze", "--seed", str(run),
                                                   *overrides)
            chosen = parent.tags.get("recommended_freeze_range")
            rounds, ended, paired, unpaired = race_figures(parent, trials, args.tolerance)
            decided = parent.tags.get("recommendation_proven") == "true"
            searched, confirmed_epochs = epochs_of(trials, "search"), epochs_of(trials, "confirm")
            share = (searched + confirmed_epochs) / grid_epochs
            shares.append(share)
            landed += chosen in within
            proven += decided
            proven_wrong += decided and chosen not in within
            if paired == paired and unpaired:
                ratios.append(paired / unpaired)
            mean = means[chosen][0] if chosen in means else math.nan
            rows.append((str(run), str(chosen), f"{mean:.4f}", "yes" if chosen in within else "NO", str(rounds),
                         ended, f"{paired:.4f}", f"{unpaired:.4f}",
                         f"{metrics.get('recommended_score', math.nan):.4f}",
                         f"{metrics.get('test_score', math.nan):.4f}", f"{wall:.0f}", str(searched),
                         str(confirmed_epochs), f"{share:.2f}"))
            print("  ".join(rows[-1]), flush=True)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        print(f"within the tolerance of the grid's best (by its means): {landed} of {args.runs}; compute "
              f"(trial-epochs) as a share of the grid's: mean {statistics.fmean(shares):.2f}, max {max(shares):.2f}; "
              f"races proven: {proven} (of them outside the tolerance by the grid: {proven_wrong}); paired / unpaired "
              "standard error: median "
              f"{statistics.median(ratios) if ratios else math.nan:.2f}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
