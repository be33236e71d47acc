#!/usr/bin/env python
"""Search how much of a pretrained network to freeze.

    python run_search.py                         # the embedded default: digits CNN, MNIST → UCI digits
    python run_search.py --smoke-test            # the whole path in seconds
    python run_search.py --space search_spaces/digits_freeze_range.yaml --set train.epochs=5

Reads a search space (YAML), checks it against the task's model, runs the Ray Tune search (Optuna + ASHA),
logs every trial to MLflow under one parent run, and prints the trials by score and the command that opens
them in the MLflow UI. Exit codes: 0 done, 1 the search failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tune.config import ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parent
DEFAULT_SPACE = ROOT / "search_spaces" / "digits_freeze.yaml"
# --smoke-test: a few trials of two epochs; --set and --num-samples still win.
SMOKE = [("search.num_samples", 4), ("train.epochs", 2), ("search.grace_period", 1)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search space YAML (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the space file, e.g. train.epochs=5 or space.lr=0.001 (repeatable)")
    parser.add_argument("--seed", type=int, help="seed of the sampler and of every trial (search.seed, train.seed)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--storage-path", type=Path, default=Path("ray_results"),
                        help="where Ray Tune keeps trial checkpoints (default: ./ray_results)")
    parser.add_argument("--address", help="an existing Ray cluster to run on (default: start Ray here)")
    parser.add_argument("--smoke-test", action="store_true", help="4 trials of 2 epochs: the whole path quickly")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Check everything the user gave before starting Ray or touching MLflow.
    try:
        overrides = (SMOKE if args.smoke_test else []) + parse_overrides(args.set)
        if args.num_samples is not None:
            overrides.append(("search.num_samples", args.num_samples))
        if args.seed is not None:
            overrides += [("search.seed", args.seed), ("train.seed", args.seed)]
        cfg = load_config(args.space, overrides)
        from tune.freeze import check_space
        from tune.tasks import load_task

        block_model = load_task(cfg.task).build_model()
        space = check_space(cfg.space, cfg.train, block_model)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from tune import report, search, tracking

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri()
    tracker = tracking.SearchTracker(tracking_uri, cfg.name)
    commit = tracking.git_commit(ROOT)
    parent_id = tracker.start_search(
        run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
        params=tracking.flatten(cfg.as_dict()),
        tags={"space_file": str(args.space), "smoke_test": str(args.smoke_test),
              **({"mlflow.source.git.commit": commit} if commit else {})},
        artifacts=[args.space])
    print(f"search {cfg.name}: {cfg.search.num_samples} trials of up to {cfg.train.epochs} epochs over "
          f"{', '.join(cfg.space)}; MLflow parent run {parent_id}", flush=True)

    status = "FAILED"
    try:
        outcome = search.run(cfg, tracker, storage_path=args.storage_path, space=space, address=args.address)
        status = "FINISHED" if outcome.errored < outcome.trials else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        print("interrupted: open runs marked KILLED", file=sys.stderr)
        return 130
    finally:
        tracker.finish_search(status)

    results = report.summarise(tracking.fetch_trials(tracking_uri, parent_id))
    text = "\n\n".join([
        f"Trials by score at their best epoch ({len(results)} of {outcome.trials}, {outcome.errored} failed, "
        f"{outcome.wall_time_s:.0f} s):\n" + report.trial_table(results, list(cfg.space)),
        "By freeze depth:\n" + report.depth_table(results),
    ])
    best = report.best_trial(results)
    if best is not None:
        text += (f"\n\nBest: {best.name}, freeze {best.freeze_range}, score {best.score:.4f} at epoch "
                 f"{best.best_epoch}, {best.time_to_best_s:.2f} s of training, {best.peak_mem_mb:.2f} MB peak")
        tracker.set_tags(parent_id, {"best_trial": best.name, "best_freeze_range": best.freeze_range,
                                     "best_score": f"{best.score:.4f}"})
    tracker.log_text(text + "\n", "report.txt")
    print("\n" + text)
    print(f"\nCompare the runs: {tracking.ui_command(tracking_uri)}  (experiment '{cfg.name}')")
    return 0 if status == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
