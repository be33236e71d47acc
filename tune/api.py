"""The Python API: one search of how much of a pretrained network to freeze, from Python.

    import tune

    search = tune.FreezeSearch("digits_freeze", overrides={"train.epochs": 5})  # every check: ConfigError
    result = search.run()                          # the search, the race, the report; MLflow holds it all
    print(result.recommendation.freeze_range, result.recommendation.score)

``FreezeSearch`` checks everything when it is built (the config against the task's model, the tracking store, the
Ray cluster, the folders) and starts nothing; ``run`` runs it once and returns a ``SearchResult``. ``load_search``
reads a finished search back from MLflow (its report again). The console command (``freeze-search``, tune/cli.py)
is a thin client of these functions. Output lines go through the ``tune`` logger (tune/log.py).

The checks these functions share with the command line name its flags (``--confirm-top``); raised here, a
ConfigError names the function's argument instead (``confirm_top``), raised from the error the check wrote (its
``__cause__``, which the command prints).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tune.driver.checks import StudyOptions, check_submission
from tune.driver.study import Study, rebuild_report
from tune.errors import ConfigError
from tune.result import Recommended, SearchResult
from tune.settings import loading
from tune.settings.config import Config
from tune.settings.loading import DEFAULT_SPACE, bundled_spaces, parse_overrides, space_file
from tune.tracker.provenance import PACKAGE_DIR

__all__ = ["DEFAULT_REPORT_DIR", "DEFAULT_SPACE", "DEFAULT_STORAGE_PATH", "FreezeSearch", "Recommended",
           "SearchResult", "follow", "layers", "load_config", "load_search", "spaces", "submit"]

# The defaults the command line shows; their owners are the bundled spaces and the search's options.
DEFAULT_STORAGE_PATH, DEFAULT_REPORT_DIR = StudyOptions.storage_path, StudyOptions.report_dir

Overrides = Mapping[str, Any] | Sequence[str] | Sequence[tuple[str, Any]]

# The command's flags and the arguments that stand for them here ("--set train.epochs" becomes
# "overrides.train.epochs").
ARGUMENTS = {"--space": "space", "--set": "overrides", "--tracking-uri": "tracking_uri",
             "--storage-path": "storage_path", "--report-dir": "report_dir", "--address": "address",
             "--confirm": "confirm", "--confirm-top": "confirm_top", "--resume": "resume",
             "--experiment": "experiment", "--run-id": "run_id", "--tolerance": "tolerance", "--cost": "cost",
             "--project-dir": "project_dir"}


@contextlib.contextmanager
def _python_names(names: Mapping[str, str] = ARGUMENTS) -> Iterator[None]:
    """A ConfigError naming a flag of ``names`` is raised again naming its argument, from the original."""
    try:
        yield
    except ConfigError as err:
        flag, _, rest = err.key.partition(" ")
        if flag not in names:
            raise
        key = f"{names[flag]}.{rest}" if rest else names[flag]
        raise type(err)(key, err.value, err.allowed, err.problem) from err


def _overrides(given: Overrides | None) -> list[tuple[str, Any]]:
    """``{"train.epochs": 5}``, ``["train.epochs=5"]`` (as --set) or ``[("train.epochs", 5)]``; ConfigError on
    anything else (a nested mapping would replace a whole section: dotted keys only)."""
    allowed = "a mapping {'section.key': value}, or a list of 'section.key=value' strings or (key, value) pairs"
    if not given:
        return []
    if isinstance(given, str):
        raise ConfigError("overrides", given, allowed)
    items = list(given.items()) if isinstance(given, Mapping) else list(given)
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs += parse_overrides([item])
            continue
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ConfigError("overrides", item, allowed)
        if "." not in item[0] and item[0] != "name":
            raise ConfigError(f"overrides.{item[0]}", item[1], "a dotted key such as train.epochs, or name (a "
                                                                     "whole section would replace the file's)")
        pairs.append(item)
    return pairs


def _options(space: str | Path | Mapping[str, Any], *, overrides: Overrides | None = None,
             storage_path: str | Path | None = None, report_dir: str | Path | None = None, task: Any = None,
             **flags: Any) -> StudyOptions:
    """The search's options; ConfigError for a value of the wrong kind (None: the default)."""
    if not isinstance(space, (str, Path, Mapping)):
        raise ConfigError("space", space, "a bundled space's name, a space file's path or a mapping")
    for key in ("resume", "smoke_test", "verbose"):  # a string such as "no" would be true
        if key in flags and not isinstance(flags[key], bool):
            raise ConfigError(key, flags[key], "True or False")
    pairs = _overrides(overrides)
    if task is not None and any(key.startswith("task.") for key, _ in pairs):
        raise ConfigError("overrides", next(key for key, _ in pairs if key.startswith("task.")),
                          "no task.* key with task= (the task object replaces the space's task)")
    return StudyOptions(space_file=space if isinstance(space, Mapping) else space_file(space), overrides=pairs,
                        storage_path=str(storage_path or StudyOptions.storage_path),
                        report_dir=Path(report_dir or StudyOptions.report_dir), task=task, **flags)


class FreezeSearch:
    """One search, checked when built. ``space``: a bundled space's name (``digits_freeze``, ``image_freeze``,
    ...: ``tune.spaces()``), a space file's path, or the file's content as a mapping (a config built in
    Python). ``overrides`` change its values as ``--set`` does: ``{"train.epochs": 5, "space.lr": 0.001}``.
    ``task``: your own task as a Python object (a ``tune.Task``, or a function returning one), in place of the
    space's; Ray pickles it into every trial; with a bundled space, the experiment and the registered model take
    the task's name. ``name``: the experiment's (and the registered model's) name instead. The rest are the
    command's flags: ``tracking_uri`` (default
    $MLFLOW_TRACKING_URI or sqlite:///mlflow.db here), ``storage_path`` (Ray Tune's trial checkpoints),
    ``report_dir``, ``address`` (a Ray cluster), ``confirm`` / ``confirm_top`` (the race's seeds and candidates),
    ``resume`` (go on with this space's latest unfinished search), ``smoke_test`` (4 trials of 2 epochs),
    ``verbose`` (Ray Tune's and Optuna's own lines too). Raises ``tune.ConfigError`` (key, value, what is allowed)
    before anything starts."""

    def __init__(self, space: str | Path | Mapping[str, Any] = DEFAULT_SPACE, *, overrides: Overrides | None = None,
                 task: Any = None, name: str | None = None, tracking_uri: str | None = None,
                 storage_path: str | Path | None = None, report_dir: str | Path | None = None,
                 address: str | None = None, confirm: int | None = None, confirm_top: int | None = None,
                 resume: bool = False, smoke_test: bool = False, verbose: bool = False) -> None:
        with _python_names():
            if name is not None:
                overrides = [*_overrides(overrides), ("name", name)]
            self.options = _options(space, overrides=overrides, task=task, tracking_uri=tracking_uri,
                                    storage_path=storage_path, report_dir=report_dir, address=address,
                                    confirm=confirm, confirm_top=confirm_top, resume=resume, smoke_test=smoke_test,
                                    verbose=verbose)
            self._study = Study.prepare(self.options)
        self._ran = False

    @property
    def config(self) -> Any:
        """The checked config (tune.Config), cut-point names resolved."""
        return self._study.cfg

    def run(self) -> SearchResult:
        """Run the search once: the trials, the confirmation race, the test split, the report, the recommended
        model. Its lines (a line per trial as it ends, the race, the report) go through the ``tune`` logger as the
        command prints them; ``result.text`` is the report again. A search that failed returns status FAILED; bad
        input the first trials met raises ConfigError; Ctrl-C returns KILLED (``resume=True`` goes on)."""
        if self._ran:
            raise RuntimeError("a FreezeSearch runs once; build another (resume=True goes on with an unfinished one)")
        self._ran = True
        return self._study.run()


def load_search(experiment: str | None = None, *, run_id: str | None = None, tracking_uri: str | None = None,
                tolerance: float | None = None, cost: str | None = None,
                report_dir: str | Path = StudyOptions.report_dir, verbose: bool = False) -> SearchResult:
    """A finished search read back from MLflow alone (the latest of ``experiment``, or the parent run ``run_id``),
    its report written again under ``report_dir``; ``tolerance`` and ``cost`` change the recommendation rule.
    Quiet, as loading is (``optuna.load_study``): ``verbose=True`` logs the report through the ``tune`` logger, as
    ``freeze-search report`` prints it; ``result.text`` holds it either way."""
    from tune.tracker.store import tracking_uri as resolve_uri

    if experiment is None and run_id is None:
        raise ConfigError("experiment", None, "an experiment name or a parent run id (run_id)")
    uri = resolve_uri(tracking_uri)
    with _python_names():
        return rebuild_report(uri, experiment=experiment, run_id=run_id, tolerance=tolerance, cost=cost,
                              report_dir=Path(report_dir), **({} if verbose else {"say": _silent}))


def _silent(line: str) -> None:
    """Says nothing: a quiet load_search."""


def layers(space: str | Path | Mapping[str, Any] = DEFAULT_SPACE, *, overrides: Overrides | None = None,
           task: str | None = None, model: str | None = None) -> str:
    """The blocks of a space's task model as a table (index, name, type, parameters, share of forward FLOPs, the
    named cut points): which N is my backbone? ``task`` / ``model`` replace the space's task name / model option."""
    from tune.blocks import layer_table
    from tune.settings.config import TaskConfig
    from tune.tasks import load_block_model

    with _python_names():
        cfg_task = loading.load_config(space if isinstance(space, Mapping) else space_file(space),
                                       _overrides(overrides)).task
    if task is not None:
        cfg_task = TaskConfig(task, {} if task != cfg_task.name else dict(cfg_task.options))
    if model is not None:
        cfg_task = TaskConfig(cfg_task.name, {**cfg_task.options, "model": model})
    options = ", ".join(f"{key}={value}" for key, value in cfg_task.options.items())
    header = f"task {cfg_task.name}" + (f", options: {options}" if options else "")
    return header + "\n" + layer_table(load_block_model(cfg_task))


def load_config(path: str | Path | Mapping[str, Any], overrides: Sequence[tuple[str, Any]] = ()) -> Config:
    """A space file (or a bundled space's name, or the file's content as a mapping) with ``overrides`` (dotted key,
    value) applied, checked: a ``tune.Config`` (frozen dataclasses); ConfigError naming the key otherwise."""
    with _python_names({"--space": "path", "--set": "overrides"}):
        return loading.load_config(path, overrides)


def _checkout(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "search_spaces").is_dir()


def submit(address: str, space: str | Path = DEFAULT_SPACE, *, overrides: Overrides | None = None,
           name: str | None = None, tracking_uri: str | None = None, storage_path: str | Path | None = None,
           report_dir: str | Path | None = None, confirm: int | None = None, confirm_top: int | None = None,
           resume: bool = False, smoke_test: bool = False, verbose: bool = False,
           project_dir: str | Path | None = None, python: str = "python") -> str:
    """Submit the search ``tune.FreezeSearch(space, ...)`` would run, with the same arguments, as a Ray Job to the
    cluster whose dashboard is ``address``, with ``project_dir`` (a checkout of this project; default: the working
    directory if it is one, else the checkout this package runs from) uploaded as its working directory: ``space``
    a bundled space or a file inside it, ``tracking_uri`` a server the cluster reaches, ``storage_path`` a folder
    every node shares. The search is checked here first (ConfigError) rather than on the cluster. Returns the job
    id; ``follow`` waits for it."""
    import os

    from tune.driver import cluster

    with _python_names():
        project_dir = _project_dir(project_dir)
        if name is not None:
            overrides = [*_overrides(overrides), ("name", name)]
        options = _options(space, overrides=overrides, tracking_uri=tracking_uri, storage_path=storage_path,
                           report_dir=report_dir, confirm=confirm, confirm_top=confirm_top, resume=resume,
                           smoke_test=smoke_test, verbose=verbose)
        inside = check_submission(options, project_dir)  # bad input fails here, not on the cluster
        if options.tracking_uri is None:  # the check accepted the environment's
            options = replace(options, tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
        arguments = cluster.job_arguments(options, inside)
    return cluster.submit_job(address, project_dir, arguments, python=python)


def _project_dir(given: str | Path | None) -> Path:
    """The checkout a Ray Job uploads: ``given``, else the working directory if it is one, else the checkout this
    package runs from."""
    if given is None:
        given = next((f for f in (Path.cwd(), PACKAGE_DIR.parent) if _checkout(f)), None)
        if given is None:
            raise ConfigError("--project-dir", None, "a checkout of the project (a Ray Job uploads it as its working "
                                                     "directory)", problem="neither the working directory nor the "
                                                                           "installed package is one")
    project_dir = Path(given).resolve()
    if not _checkout(project_dir):
        raise ConfigError("--project-dir", str(project_dir), "a checkout of the project (pyproject.toml and "
                                                             "search_spaces/ in it)")
    return project_dir


def follow(address: str, job_id: str) -> str:
    """Print a submitted job's logs as they come; its final status (``...SUCCEEDED``, ``...FAILED``)."""
    from tune.driver import cluster

    return cluster.follow_job(address, job_id)


def spaces() -> dict[str, Path]:
    """The bundled search spaces by name."""
    return bundled_spaces()
