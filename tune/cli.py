"""Search how much of a pretrained network to freeze.

    freeze-search                               # the embedded default: digits CNN, MNIST → UCI digits
    freeze-search --smoke-test                  # the whole path in seconds
    freeze-search --confirm 0                   # no confirmation race with fresh seeds (the default races)
    freeze-search --space digits_freeze_range --set train.epochs=5   # a bundled space by name, or a file's path
    freeze-search report [--experiment NAME | --run-id ID]   # the report again, from MLflow alone
    freeze-search layers [--space FILE | --task yolo --model yolov5mu.yaml]  # which N is my backbone?
    freeze-search submit --address http://HEAD:8265 --tracking-uri http://MLFLOW:5000 \\
        --storage-path /shared/ray_results [search args]             # the same search as a Ray Job

(From a checkout, ``python run_search.py`` is the same command.)

Reads a search space (YAML), checks it against the task's model, runs the Ray Tune search (Optuna + ASHA),
logs every trial to MLflow under one parent run, and prints the trials, the frontier and a recommendation;
plots and a summary go to --report-dir and to the parent run. Exit codes: 0 done, 1 failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tune import api
from tune.errors import ConfigError, TrialConfigError

EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 130}
PROG = "freeze-search"


# the usage: a search (its options below), then the commands, each with its own --help
USAGE = "\n       ".join(f"{PROG} {form}" for form in (
    "[search options]", "report [--experiment NAME | --run-id ID] [...]",
    "layers [--space FILE] [--task NAME] [--model M] [...]",
    "submit --address http://HEAD:8265 [--wait] [search options]"))
COMMANDS = ("Commands (each with --help): report, a search's report again, from MLflow alone; layers, a task "
            "model's blocks;\nsubmit, a search as a Ray Job. Without one, a search.")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, usage=USAGE,
                                     description=__doc__.split("\n\n")[0] + "\n" + COMMANDS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--space", default=api.DEFAULT_SPACE,
                        help="a search space: a bundled one by name (" + ", ".join(api.spaces()) + ") or a YAML "
                             "file's path (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the space file, e.g. train.epochs=5 or space.lr=0.001 (repeatable)")
    parser.add_argument("--seed", type=int, help="seed of the sampler and of every trial (search.seed, train.seed)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="stop the search cleanly after this many seconds (search.time_budget_s)")
    parser.add_argument("--confirm", type=int, metavar="K",
                        help="after the search, re-run the candidates with K fresh seeds each (K >= 2; 0: no "
                             "confirmation; default: the space's report.confirm_seeds, 3)")
    parser.add_argument("--confirm-top", type=int, metavar="N",
                        help="how many candidates the confirmation re-runs (default: the space's "
                             "report.confirm_top, 2)")
    _add_store_args(parser)
    parser.add_argument("--storage-path", default=api.DEFAULT_STORAGE_PATH,
                        help="where Ray Tune keeps trial checkpoints: a folder every node can write (shared on a "
                             "cluster) or a URI such as s3://bucket/path (default: ./ray_results)")
    parser.add_argument("--address", help="an existing Ray cluster to run on (default: start Ray here)")
    parser.add_argument("--smoke-test", action="store_true", help="4 trials of 2 epochs: the whole path quickly")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray Tune's and Optuna's own console output too (progress tables, hints)")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the latest unfinished search of this space (killed or interrupted): same "
                             "parent run, finished trials kept; give the same arguments as the first time")
    return parser.parse_args(argv)


def _add_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--report-dir", type=Path, default=api.DEFAULT_REPORT_DIR,
                        help="where the report, plots and summary go, one folder per search (default: ./reports)")


def search_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The search's arguments as tune.FreezeSearch's; the flags become the overrides they stand for."""
    flags = [("search.num_samples", args.num_samples), ("search.seed", args.seed), ("train.seed", args.seed),
             ("search.time_budget_s", args.time_budget)]
    overrides = [*args.set, *((key, value) for key, value in flags if value is not None)]
    return dict(space=args.space, overrides=overrides, tracking_uri=args.tracking_uri,
                storage_path=args.storage_path, report_dir=args.report_dir, address=args.address,
                confirm=args.confirm, confirm_top=args.confirm_top, resume=args.resume, smoke_test=args.smoke_test,
                verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    """Bad input (a ConfigError, raised by every command's checks before it starts anything): one line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = {"report": report_main, "submit": submit_main, "layers": layers_main}.get(argv[0] if argv else "")
    try:
        return command(argv[1:]) if command else search_main(argv)
    except ConfigError as err:
        # the API names a flag as its Python argument, raised from the error that names the flag: the command's own
        shown = err.__cause__ if isinstance(err.__cause__, ConfigError) else err
        print(f"error: {shown}", file=sys.stderr)
        return 2


def search_main(argv: list[str]) -> int:
    search = api.FreezeSearch(**search_kwargs(parse_args(argv)))  # every check; the search starts below
    try:
        result = search.run()
    except TrialConfigError:  # bad input the first trials met alike: the search stopped (FAILED in MLflow)
        raise
    except ConfigError as err:  # raised once runs exist: a failed search (FAILED in MLflow), not bad input
        raise RuntimeError(str(err)) from err
    if result.status == "KILLED":
        print("interrupted: open runs marked KILLED; go on with the same command and --resume", file=sys.stderr)
    return EXIT_CODES[result.status]


def submit_main(argv: list[str]) -> int:
    """``submit --address http://HEAD:8265 [--wait] [search args]``: the same search as a Ray Job."""
    parser = argparse.ArgumentParser(prog=f"{PROG} submit", add_help=False)
    parser.add_argument("--address", required=True, help="the Ray dashboard / Jobs address, http://HEAD:8265")
    parser.add_argument("--wait", action="store_true", help="follow the job's logs and exit with its outcome")
    parser.add_argument("--python", default="python", help="the Python that runs the job on the cluster")
    parser.add_argument("--project-dir", help="the checkout the job uploads as its working directory (default: the "
                                              "working directory if it is one, else the package's own checkout)")
    parser.add_argument("-h", "--help", action="store_true")
    args, search_argv = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        print(f"\nEvery other argument is a search argument ({PROG} --help); --tracking-uri must be a server the "
              "cluster reaches and --storage-path a folder (or URI) every node shares.")
        return 0
    search = search_kwargs(parse_args(search_argv))
    del search["address"]  # the job's search runs on the cluster it is submitted to
    job_id = api.submit(args.address, **search, project_dir=args.project_dir, python=args.python)
    print(f"submitted Ray Job {job_id} to {args.address}")
    print(f"  follow: ray job logs --address {args.address} --follow {job_id}")
    print(f"  stop:   ray job stop --address {args.address} {job_id}")
    if not args.wait:
        return 0
    status = api.follow(args.address, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status.endswith("SUCCEEDED") else 1


def layers_main(argv: list[str]) -> int:
    """``layers [--space FILE] [--task NAME] [--model M] [--set KEY=VALUE]``: the model's blocks, in order."""
    parser = argparse.ArgumentParser(prog=f"{PROG} layers",
                                     description="List a task's blocks: index, name, type, parameters, share of "
                                                 "forward FLOPs, and where each named cut point (backbone, ...) is.")
    parser.add_argument("--space", default=api.DEFAULT_SPACE,
                        help="a search space (name or file): its task and options")
    parser.add_argument("--task", help="a task name or import path instead of the space file's")
    parser.add_argument("--model", help="the task's model option (yolo: a model yaml such as yolov5nu.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for a search")
    args = parser.parse_args(argv)
    print(api.layers(args.space, overrides=args.set, task=args.task, model=args.model))
    return 0


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} report",
                                     description="The report of a finished search, from MLflow data alone.")
    parser.add_argument("--experiment", default=api.DEFAULT_SPACE, help="the latest search of this experiment")
    parser.add_argument("--run-id", help="a search's parent run id (instead of --experiment)")
    parser.add_argument("--tolerance", type=float, help="override the space file's report.tolerance")
    parser.add_argument("--cost", help="override report.cost: epoch_time_s, train_time_s or peak_mem_mb")
    _add_store_args(parser)
    args = parser.parse_args(argv)
    api.load_search(None if args.run_id else args.experiment, run_id=args.run_id, tracking_uri=args.tracking_uri,
                     tolerance=args.tolerance, cost=args.cost, report_dir=args.report_dir, verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
