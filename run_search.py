#!/usr/bin/env python
"""Search how much of a pretrained network to freeze.

    python run_search.py                         # the embedded default: digits CNN, MNIST → UCI digits
    python run_search.py --smoke-test            # the whole path in seconds
    python run_search.py --confirm 3             # then re-run the top candidates with 3 fresh seeds each
    python run_search.py --space search_spaces/digits_freeze_range.yaml --set train.epochs=5
    python run_search.py report [--experiment NAME | --run-id ID]   # the report again, from MLflow alone
    python run_search.py layers [--space FILE | --task yolo --model yolov5mu.yaml]  # which N is my backbone?
    python run_search.py submit --address http://HEAD:8265 --tracking-uri http://MLFLOW:5000 \
        --storage-path /shared/ray_results [search args]             # the same search as a Ray Job

Reads a search space (YAML), checks it against the task's model, runs the Ray Tune search (Optuna + ASHA),
logs every trial to MLflow under one parent run, and prints the trials, the frontier and a recommendation;
plots and a summary go to --report-dir and to the parent run. Exit codes: 0 done, 1 failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from tune.config import ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parent
DEFAULT_SPACE = ROOT / "search_spaces" / "digits_freeze.yaml"
# --smoke-test: a few trials of two epochs; --set and --num-samples still win.
SMOKE = [("search.num_samples", 4), ("train.epochs", 2), ("search.grace_period", 1)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search space YAML (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the space file, e.g. train.epochs=5 or space.lr=0.001 (repeatable)")
    parser.add_argument("--seed", type=int, help="seed of the sampler and of every trial (search.seed, train.seed)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="stop the search cleanly after this many seconds (search.time_budget_s)")
    parser.add_argument("--confirm", type=int, default=0, metavar="K",
                        help="after the search, re-run the top candidates with K fresh seeds each (K >= 2)")
    parser.add_argument("--confirm-top", type=int, default=3, metavar="N",
                        help="how many candidate configurations --confirm re-runs (default: %(default)s)")
    _add_store_args(parser)
    parser.add_argument("--storage-path", default="ray_results",
                        help="where Ray Tune keeps trial checkpoints: a folder every node can write (shared on a "
                             "cluster) or a URI such as s3://bucket/path (default: ./ray_results)")
    parser.add_argument("--address", help="an existing Ray cluster to run on (default: start Ray here)")
    parser.add_argument("--smoke-test", action="store_true", help="4 trials of 2 epochs: the whole path quickly")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the latest unfinished search of this space (killed or interrupted): same "
                             "parent run, finished trials kept; give the same arguments as the first time")
    return parser.parse_args(argv)


def _add_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--report-dir", type=Path, default=Path("reports"),
                        help="where the report, plots and summary go, one folder per search (default: ./reports)")


def _tracking_uri(args: argparse.Namespace) -> str:
    from tune import tracking

    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    if argv[:1] == ["submit"]:
        return submit_main(argv[1:])
    if argv[:1] == ["layers"]:
        return layers_main(argv[1:])
    return search_main(argv)


def _check_search_args(args: argparse.Namespace) -> tuple:
    """Everything the user gave, checked before Ray starts or MLflow is touched: (config, task, space, uri)."""
    overrides = (SMOKE if args.smoke_test else []) + parse_overrides(args.set)
    if args.num_samples is not None:
        overrides.append(("search.num_samples", args.num_samples))
    if args.seed is not None:
        overrides += [("search.seed", args.seed), ("train.seed", args.seed)]
    if args.time_budget is not None:
        overrides.append(("search.time_budget_s", args.time_budget))
    if args.confirm and args.confirm < 2:
        raise ConfigError("--confirm", args.confirm, "0 (no confirmation) or an integer >= 2 (seeds per candidate)")
    if args.confirm_top < 1:
        raise ConfigError("--confirm-top", args.confirm_top, "an integer >= 1")
    cfg = load_config(args.space, overrides)
    if args.smoke_test and cfg.search.algorithm == "grid" and args.num_samples is None:
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, num_samples=1))  # the grid once
    from tune import tracking
    from tune.freeze import check_space
    from tune.tasks import absolute_paths, load_task

    cfg = dataclasses.replace(cfg, task=absolute_paths(cfg.task, Path.cwd()))  # trials run in their own folders
    from tune.train import METRIC_KEYS

    task = load_task(cfg.task)
    space = check_space(cfg.space, cfg.train, task.build_model())
    known = [*METRIC_KEYS, task.metric, *task.extra_metrics]
    for metric, _ in cfg.search.objective_list:
        if metric not in known:
            raise ConfigError(f"search.objectives.{metric}" if cfg.search.objectives else "search.metric", metric,
                              "one of " + ", ".join(known))
    tracking_uri = _tracking_uri(args)
    tracking.check_store(tracking_uri)
    return cfg, task, space, tracking_uri


def search_main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        cfg, task, space, tracking_uri = _check_search_args(args)
        resume = _resumable(tracking_uri, cfg.name) if args.resume else None
        address = args.address or os.environ.get("RAY_ADDRESS")  # a Ray Job or KubeRay sets RAY_ADDRESS
        if address:
            _connect(address, "--address" if args.address else "RAY_ADDRESS")
        _check_gpus(cfg.search.gpus_per_trial, on_cluster=bool(address))
        _check_storage(args.storage_path)  # last: it makes the folder
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from tune import search, tracking

    tracker = tracking.SearchTracker(tracking_uri, cfg.name)
    searched = list(cfg.space)
    if resume is not None:
        parent_id, experiment_path = resume
        tracker.reopen_search(parent_id)
        # Runs the dead driver left open: the trials Tune saved reopen theirs when they go on; a trial started
        # after Tune's last snapshot is lost with the driver and stays KILLED (Tune samples a new one).
        tracker.kill_open_trials("the driver stopped before this trial ended")
    else:
        commit = tracking.git_commit(ROOT)
        experiment_path = None
        parent_id = tracker.start_search(
            run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
            params=tracking.flatten(cfg.as_dict()),
            tags={"space_file": str(args.space), "smoke_test": str(args.smoke_test),
                  "freeze_search.searched": json.dumps(searched),
                  "freeze_search.objectives": json.dumps(cfg.search.objective_list),
                  **({"mlflow.source.git.commit": commit} if commit else {})},
            artifacts=[args.space])
    planned = (f"a grid of {search.grid_size(space)} x {cfg.search.num_samples}" if cfg.search.algorithm == "grid"
               else str(cfg.search.num_samples))
    print(f"search {cfg.name}: {planned} trials of up to {cfg.train.epochs} epochs over "
          f"{', '.join(searched)}; MLflow parent run {parent_id}", flush=True)

    status, reason = "FAILED", "the search failed before this trial ended"
    try:
        outcome = search.run(cfg, tracker, storage_path=args.storage_path, space=space, address=args.address,
                             restore_from=experiment_path)
        tracker.kill_open_trials()
        checkpoints = dict(outcome.best_checkpoints)
        header = (f"{outcome.trials} trials in {outcome.wall_time_s:.0f} s, {outcome.errored} failed"
                  + (f"; the time budget of {cfg.search.time_budget_s:g} s stopped the search: trials still "
                     "running then are marked KILLED, later ones never started" if outcome.budget_reached else "")
                  + ".\n\n")
        if args.confirm and outcome.errored < outcome.trials:
            candidates = _candidates(tracking_uri, parent_id, cfg, args.confirm_top)
            seeds = [cfg.train.seed + i for i in range(1, args.confirm + 1)]
            done = _confirmed_before(tracking_uri, parent_id) if resume is not None else set()
            print(f"confirming {len(candidates)} candidates with seeds {seeds}"
                  + (f" ({len(done)} of these runs finished before the resume)" if done else ""), flush=True)
            search.confirm(cfg, tracker, candidates, seeds, storage_path=args.storage_path, address=args.address,
                           done=done)
            tracker.kill_open_trials()
        report = _write_report(tracker, tracking_uri, parent_id, cfg.name, searched, cfg.search.objective_list,
                               cfg.report.tolerance, cfg.report.cost, args.report_dir, header)
        _log_recommended_model(tracker, parent_id, report, checkpoints, task)
        status = "FINISHED" if outcome.errored < outcome.trials else "FAILED"
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted (Ctrl-C)"
        print("interrupted: open runs marked KILLED; go on with the same command and --resume", file=sys.stderr)
        return 130
    finally:
        tracker.finish_search(status, reason=reason)
    print(f"\nCompare the runs: {tracking.ui_command(tracking_uri)}  (experiment '{cfg.name}')")
    cache = _prefix_cache_line(args.storage_path)
    if cache:
        print(cache)
    return 0 if status == "FINISHED" else 1


def _prefix_cache_line(storage_path: str) -> str | None:
    """What the shared frozen-prefix cache holds on disk: it is never pruned, so the user sees its size."""
    from tune import search

    folder = search.prefix_cache_dir(storage_path)
    files = sorted(Path(folder).glob("*.pt")) if folder else []
    if not files:
        return None
    size = sum(f.stat().st_size for f in files) / 2**20
    return (f"Frozen-prefix cache: {len(files)} file{'s' * (len(files) > 1)}, {size:.1f} MB in {folder} (later "
            "searches with the same storage path, weights and data reuse them; delete the folder any time)")


def _connect(address: str, key: str = "--address") -> None:
    """Join the cluster now, so that an unreachable one is bad input, not a failed search."""
    from tune import search

    allowed = "a running Ray cluster this machine reaches (HOST:6379 or auto)"
    endpoint = _host_port(address)
    if endpoint is not None:  # ray.init would retry a dead address for about a minute before saying so
        try:
            socket.create_connection(endpoint, timeout=5).close()
        except OSError as err:
            raise ConfigError(key, address, allowed,
                              problem=f"nothing answers at {endpoint[0]}:{endpoint[1]}: {type(err).__name__}") from None
    try:
        search.init_ray(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(key, address, allowed, problem=" ".join(str(err).split())[:200]) from None


def _host_port(address: str) -> tuple[str, int] | None:
    """HOST:PORT of a Ray address (GCS ``HOST:PORT`` or client ``ray://HOST:PORT``); None for ``auto``, ``local``
    and anything else Ray resolves itself."""
    match = re.fullmatch(r"(?:ray://)?\[?([\w.\-:]+?)\]?:(\d+)/?", address.strip())
    return (match.group(1), int(match.group(2))) if match else None


def _check_gpus(per_trial: float, on_cluster: bool) -> None:
    """A trial asking for more GPUs than any node has waits until such a node joins: on this machine that is
    never (bad input); on a cluster an autoscaler may add one (a warning)."""
    if per_trial <= 0:
        return
    from tune import search

    largest = search.largest_node_gpus()
    if per_trial <= largest:
        return
    where = "no GPU here" if largest == 0 else f"the largest node has {largest:g}"
    if on_cluster:
        print(f"warning: search.gpus_per_trial is {per_trial:g} but no node of the cluster has that many GPUs now "
              f"({where}): trials wait until such a node joins (an autoscaler)", file=sys.stderr)
        return
    raise ConfigError("search.gpus_per_trial", per_trial,
                      f"at most {largest:g} (0 trains on the CPU: --set search.gpus_per_trial=0)", problem=where)


def _resumable(tracking_uri: str, experiment: str) -> tuple[str, str]:
    """The latest search of ``experiment`` if it did not finish, and the Ray experiment folder to restore."""
    from tune import search, tracking

    try:
        parent_id, _, tags, status = tracking.find_search(tracking_uri, experiment, None)
    except LookupError as err:
        raise ConfigError("--resume", experiment, "an experiment with an unfinished search", problem=str(err)) from None
    if status == "FINISHED":
        raise ConfigError("--resume", experiment, "an experiment whose latest search did not finish",
                          problem=f"search {parent_id} finished")
    path = tags.get("ray.experiment_path", "")
    if not path or not search.can_restore(path):
        raise ConfigError("--resume", experiment, "a search whose Ray experiment folder is still there",
                          problem=f"cannot restore {path or 'an unrecorded path'}")
    return parent_id, path


def _check_storage(storage_path: str) -> None:
    if "://" in storage_path:
        return  # a URI (s3://, gs://, ...): Ray checks it when the search starts
    path = Path(storage_path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError("--storage-path", storage_path, "a folder this process can write (shared by every node "
                          "on a cluster)", problem=err.strerror or type(err).__name__) from None


def _candidates(tracking_uri: str, parent_id: str, cfg, top: int) -> dict[str, dict]:
    """The configurations worth re-running: the recommendation, the best score, the frontier, then the rest by
    score, up to ``top`` distinct ones."""
    from tune import report, tracking

    # the search's own trials: after a resume, confirmation runs that finished before the stop are there too
    results = [r for r in report.summarise(tracking.fetch_trials(tracking_uri, parent_id)) if r.candidate is None]
    chosen = report.recommend(results, cfg.report.tolerance, cfg.report.cost)
    ordered = ([chosen.trial, chosen.best, *report.frontier(results, report.DEFAULT_FRONTIER), *results]
               if chosen else [])
    candidates: dict[str, dict] = {}
    seen = set()
    for result in ordered:
        params = {k: _typed(result.params[k]) for k in cfg.space}
        key = json.dumps(params, sort_keys=True)
        if key not in seen and len(candidates) < top:
            seen.add(key)
            candidates[result.name] = params
    return candidates


def _confirmed_before(tracking_uri: str, parent_id: str) -> set[tuple[str, int]]:
    """The (candidate, seed) confirmation runs a stopped driver finished: a resumed --confirm does not repeat them
    (runs it left unfinished are KILLED, run again, and left out of the report)."""
    from tune import tracking

    return {(r.tags["candidate"], int(r.params["seed"])) for r in tracking.fetch_trials(tracking_uri, parent_id, ())
            if r.tags.get("candidate") and r.status == "FINISHED" and "seed" in r.params}


def _typed(text: str):
    """A param as MLflow stored it (a string) → its value; YAML alone would keep '5e-05' a string."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _write_report(tracker, tracking_uri, parent_id, name, searched, objectives, tolerance, cost, report_dir, header):
    from tune import report, tracking

    keys = [m for m, _ in objectives]
    records = tracking.fetch_trials(tracking_uri, parent_id, extra_keys=keys)
    built = report.build_report(records, searched=searched, objectives=objectives, tolerance=tolerance, cost=cost,
                                header=header)
    out_dir = report_dir / f"{name}-{parent_id[:8]}"
    files = report.write_report(built, [r for r in records if "candidate" not in r.tags], out_dir, name)
    tracker.log_files(parent_id, files, "report")
    if built.recommendation is not None:
        chosen = built.confirmed_choice or built.recommendation.trial  # after --confirm, the confirmed one
        tracker.set_tags(parent_id, {"recommended_trial": chosen.name, "recommended_freeze_range": chosen.freeze_range,
                                     "best_score": f"{built.recommendation.best.score:.4f}"})
    print("\n" + built.text)
    print(f"\nReport, plots and summary: {out_dir}/ (also artifacts of the parent run, under report/)")
    return built


def _log_recommended_model(tracker, parent_id, built, checkpoints, task) -> None:
    """The recommended trial's best-epoch weights as an MLflow model of the parent run."""
    if built.recommendation is None:
        return
    name = built.confirmed_choice.name if built.confirmed_choice else built.recommendation.trial.name
    checkpoint = checkpoints.get(name)
    if checkpoint is None:
        print(f"no checkpoint of trial {name}: no model logged", file=sys.stderr)
        return
    import tune
    from tune.train import load_checkpoint

    block_model = task.build_model()
    with checkpoint.as_directory() as directory:  # a local folder, or one downloaded from the storage URI
        block_model.module.load_state_dict(load_checkpoint(directory)["model"])
    block_model.module.eval()
    example = block_model.example_input.numpy()
    uri = tracker.log_model(parent_id, block_model.module, example, Path(tune.__file__).parent)
    tracker.set_tags(parent_id, {"recommended_model_uri": uri})
    print(f"Recommended model (trial {name}, its best epoch): {uri}")


def submit_main(argv: list[str]) -> int:
    """``submit --address http://HEAD:8265 [--wait] [search args]``: the same search as a Ray Job."""
    parser = argparse.ArgumentParser(prog="run_search.py submit", add_help=False)
    parser.add_argument("--address", required=True, help="the Ray dashboard / Jobs address, http://HEAD:8265")
    parser.add_argument("--wait", action="store_true", help="follow the job's logs and exit with its outcome")
    parser.add_argument("--python", default="python", help="the Python that runs the job on the cluster")
    parser.add_argument("-h", "--help", action="store_true")
    args, search_argv = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        print("\nEvery other argument is a search argument (python run_search.py --help); --tracking-uri must be a "
              "server the cluster reaches and --storage-path a folder (or URI) every node shares.")
        return 0
    search_args = parse_args(search_argv)
    try:
        if not (search_args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
            raise ConfigError("--tracking-uri", None, "an MLflow server the cluster reaches, e.g. http://HOST:5000 "
                                                      "(a local sqlite file would stay inside the job's folder)")
        storage = search_args.storage_path
        if "://" not in storage and not Path(storage).is_absolute():
            raise ConfigError("--storage-path", storage, "an absolute folder every node shares, or a URI (s3://...)")
        if not search_args.space.resolve().is_relative_to(ROOT):
            raise ConfigError("--space", str(search_args.space), f"a space file inside the project ({ROOT}), which "
                                                                 "is uploaded as the job's working directory")
        _check_search_args(search_args)  # bad input fails here, not on the cluster
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tune import search

    # the job runs in an uploaded copy of the project: name the space file by its place there
    inside = str(search_args.space.resolve().relative_to(ROOT))
    search_argv = [inside if a == str(search_args.space) else a for a in search_argv]
    job_id = search.submit_job(args.address, ROOT, search_argv, python=args.python)
    print(f"submitted Ray Job {job_id} to {args.address}")
    print(f"  follow: ray job logs --address {args.address} --follow {job_id}")
    print(f"  stop:   ray job stop --address {args.address} {job_id}")
    if not args.wait:
        return 0
    status = search.follow_job(args.address, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status.endswith("SUCCEEDED") else 1


def layers_main(argv: list[str]) -> int:
    """``layers [--space FILE] [--task NAME] [--model M] [--set KEY=VALUE]``: the model's blocks, in order."""
    parser = argparse.ArgumentParser(prog="run_search.py layers",
                                     description="List a task's blocks: index, name, type, parameters, share of "
                                                 "forward FLOPs, and where each named cut point (backbone, ...) is.")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="a search space file: its task and options")
    parser.add_argument("--task", help="a task name or import path instead of the space file's")
    parser.add_argument("--model", help="the task's model option (yolo: a model yaml such as yolov5nu.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for a search")
    args = parser.parse_args(argv)
    try:
        from tune.config import TaskConfig
        from tune.freeze import layer_table
        from tune.tasks import load_block_model

        cfg = load_config(args.space, parse_overrides(args.set))
        task_config = cfg.task
        if args.task is not None:
            task_config = TaskConfig(args.task, {} if args.task != task_config.name else dict(task_config.options))
        if args.model is not None:
            task_config = TaskConfig(task_config.name, {**task_config.options, "model": args.model})
        block_model = load_block_model(task_config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"task {task_config.name} {dict(task_config.options) or ''}".rstrip())
    print(layer_table(block_model))
    return 0


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run_search.py report",
                                     description="The report of a finished search, from MLflow data alone.")
    parser.add_argument("--experiment", default="digits_freeze", help="the latest search of this experiment")
    parser.add_argument("--run-id", help="a search's parent run id (instead of --experiment)")
    parser.add_argument("--tolerance", type=float, help="override the space file's report.tolerance")
    parser.add_argument("--cost", help="override report.cost: epoch_time_s, train_time_s or peak_mem_mb")
    _add_store_args(parser)
    args = parser.parse_args(argv)
    from tune import tracking
    from tune.config import COST_METRICS

    tracking_uri = _tracking_uri(args)
    try:
        if args.cost is not None and args.cost not in COST_METRICS:
            raise ConfigError("--cost", args.cost, "one of " + ", ".join(COST_METRICS))
        if args.tolerance is not None and not args.tolerance >= 0:
            raise ConfigError("--tolerance", args.tolerance, "a number >= 0")
        tracking.check_store(tracking_uri)
        if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            raise ConfigError("--tracking-uri", tracking_uri, "an existing MLflow store", problem="no such file")
        try:
            parent_id, params, tags, _ = tracking.find_search(tracking_uri, args.experiment, args.run_id)
        except LookupError as err:
            raise ConfigError("--run-id" if args.run_id else "--experiment", args.run_id or args.experiment,
                              "a search logged in this tracking store", problem=str(err)) from None
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tracker = tracking.SearchTracker(tracking_uri, params.get("name", args.experiment))
    objectives = [tuple(pair) for pair in json.loads(tags.get("freeze_search.objectives", '[["score", "max"]]'))]
    _write_report(tracker, tracking_uri, parent_id, params.get("name", args.experiment),
                  json.loads(tags.get("freeze_search.searched", "[]")), objectives,
                  args.tolerance if args.tolerance is not None else float(params.get("report.tolerance", 0.01)),
                  args.cost or params.get("report.cost", "epoch_time_s"), args.report_dir, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
