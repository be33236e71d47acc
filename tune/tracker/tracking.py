"""A search in MLflow: the experiment, the parent run of a search, the child runs of its trials (SearchTracker),
the recommended model and its registry alias, and the queries that read the runs back as tune.reporting.records. Where a
trial's result goes is tune.tracker.trial_runs'; checking the store, tune.tracker.store's; a trial's system metrics,
tune.tracker.system_metrics'.

Layout in MLflow: experiment = the search space's ``name``; parent run = the search (its config as params,
the space file as an artifact, the git commit); child run per trial (tag ``mlflow.parentRunId``) with the
trial's config and FreezeSummary as params and its metrics per epoch (step = epoch).
Every run ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tune.reporting.records import SearchRecord, TrialRecord
from tune.tracker.store import artifact_location, creating

__all__ = ["SearchTracker", "fetch_trials", "find_search", "finished_confirmations"]

PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "ray.trial_id"  # a trial run's Tune trial id (its name says what it froze, with what)
# Per-epoch metrics the report reads back as histories (the rest stay in MLflow for the UI).
HISTORY_KEYS = ("score", "train_time_s", "epoch_time_s", "peak_mem_mb", "samples_per_s", "test_score")
DATASET_CONTEXT = "mlflow.data.context"  # the input tag MLflow's UI shows beside a dataset
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
RECOMMENDED_ALIAS = "recommended"  # the registered model's alias for the latest search's recommendation
SMOKE_ALIAS = "smoke"  # a --smoke-test search's version: it exercises the registry, and leaves `recommended` alone
_BATCH = 900  # MLflow accepts up to 1,000 metrics and 100 params per log_batch call


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """MLflow's info and warning lines off for a moment (they say what the search's own lines say)."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _Quietly:
    """A system-metrics monitor whose ``finish()`` prints nothing."""

    def __init__(self, monitor: Any) -> None:
        self.monitor = monitor

    def finish(self) -> None:
        with _quiet("mlflow.system_metrics"):
            self.monitor.finish()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _client(tracking_uri: str) -> MlflowClient:
    """A client of the store; opening it creates a new sqlite file's tables, one process at a time
    (tune.tracker.store.creating)."""
    with creating(tracking_uri):
        return MlflowClient(tracking_uri=tracking_uri)


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


class SearchTracker:
    """The parent run of one search and the child runs of its trials, through an explicit MlflowClient
    (no global active run, so several trackers can coexist, e.g. in tests). ``datasets``: the task's data splits
    (tune.tracker.datasets.DataSplit), every run's MLflow datasets; ``parent_run_id``: a search logged before, whose
    runs this tracker reads and tags (``start_search`` or ``reopen_search`` set it otherwise)."""

    def __init__(self, tracking_uri: str, experiment_name: str, *, datasets: Iterable[Any] = (),
                 parent_run_id: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.client = _client(tracking_uri)
        self.experiment_id = self._experiment_id()
        self.parent_run_id = parent_run_id
        self._logged_params: dict[str, set[str]] = {}
        self.datasets: list[Any] = list(datasets)

    def _experiment_id(self) -> str:
        """The experiment's id, created if it is new; a search started at the same moment may create it first."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name,
                                                 artifact_location(self.tracking_uri, self.experiment_name))
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    # Tune pickles its callbacks (and so this tracker) into the experiment state for Tuner.restore: keep the
    # URI and ids, not the client.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("client")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("datasets", [])  # a tracker pickled before datasets were logged
        self.client = _client(self.tracking_uri)

    # -- the search ---------------------------------------------------------------------------------------
    def start_search(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str],
                     artifacts: Iterable[Path] = ()) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={"freeze_search.role": "search", **tags})
        self.parent_run_id = run.info.run_id
        try:
            self.log_params(self.parent_run_id, params)
            self.log_datasets(self.parent_run_id)
            for path in artifacts:
                self.client.log_artifact(self.parent_run_id, str(path))
        except BaseException:  # never leave the new parent RUNNING
            self.client.set_terminated(self.parent_run_id, status="FAILED", end_time=_now_ms())
            raise
        return self.parent_run_id

    def reopen_search(self, parent_run_id: str) -> None:
        """Continue an interrupted search's parent run (``--resume``)."""
        self.parent_run_id = parent_run_id
        self.client.update_run(parent_run_id, status="RUNNING")

    def search_metrics(self) -> dict[str, float]:
        """The parent run's metrics, each at its latest value (``probe_score``, the report's reference, among them)."""
        return dict(self.client.get_run(self.parent_run_id).data.metrics)

    def _children(self, filter_string: str = "") -> list:
        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'" + (f" and {filter_string}" if filter_string else "")
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=10_000)

    def find_trial(self, trial_id: str) -> tuple[str, int | None, bool] | None:
        """The child run of a Tune trial logged before (a restored search): its id, last logged epoch (None: none
        yet), and whether it had FINISHED. A run that was KILLED is reopened: its trial goes on."""
        runs = self._children(f"tags.`{TRIAL_ID_TAG}` = '{trial_id}'")
        if not runs:
            return None
        run = runs[0]
        finished = run.info.status == "FINISHED"
        if run.info.status == "KILLED":
            self.client.update_run(run.info.run_id, status="RUNNING")
        steps = [step for step, _ in self.metric_history(run.info.run_id, "score")]
        self._logged_params[run.info.run_id] = set(run.data.params)
        return run.info.run_id, max(steps, default=None), finished

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A run's metric ``key`` as (step, value) pairs, by step."""
        return _history(self.client, run_id, key)

    def kill_open_trials(self, reason: str = "the search stopped before this trial ended") -> None:
        """End every child run still open as KILLED (a time budget, an interrupt or a dead driver stopped it)."""
        if self.parent_run_id is None:
            return
        for run in self._children("attributes.status = 'RUNNING'"):
            self.end_trial(run.info.run_id, "KILLED", tags={"killed_because": reason})

    def finish_search(self, status: str, reason: str = "the search stopped before this trial ended") -> None:
        """End the parent run, and any child run still open as KILLED (with ``reason``)."""
        self.kill_open_trials(reason)
        if self.parent_run_id is not None:
            self.client.set_terminated(self.parent_run_id, status=status, end_time=_now_ms())

    def monitor_system(self, interval_s: float = 5.0) -> Any:
        """MLflow's own system-metrics logging on the parent run (the driver's machine), started; ``finish()`` it
        before the run ends. ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides ``interval_s``."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        with _quiet("mlflow.system_metrics"):  # "Started monitoring system metrics." and the like
            monitor = SystemMetricsMonitor(self.parent_run_id, sampling_interval=interval_s, resume_logging=True,
                                           tracking_uri=self.tracking_uri)
            monitor.start()
        return _Quietly(monitor)

    def log_datasets(self, run_id: str, splits: Iterable[str] = ("train", "val", "test")) -> None:
        """The task's data splits (``self.datasets``) as the run's MLflow datasets: name, digest, source, sample
        count, and the split as its context (training, validation, test), what the runs table's Dataset column
        shows."""
        inputs = [DatasetInput(Dataset(name=d.name, digest=d.digest, source_type="local" if Path(d.source).exists()
                                       else "code", source=json.dumps({"uri": d.source}),
                                       profile=json.dumps({"num_rows": d.rows}) if d.rows is not None else None),
                               tags=[InputTag(DATASET_CONTEXT, CONTEXTS[d.split])])
                  for d in self.datasets if d.split in splits]
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def log_files(self, run_id: str, files: Iterable[Path], artifact_path: str) -> None:
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_model(self, run_id: str, module: Any, input_example: Any, code_dir: Path, *,
                  metadata: Mapping[str, Any] | None = None, extra_files: Iterable[Path] = ()) -> tuple[str, str]:
        """Log a torch module as an MLflow model of ``run_id`` (with ``code_dir``, the package that defines
        its classes, so it loads without this project installed), ``metadata`` in its MLmodel file and
        ``extra_files`` under its ``extra_files/``; returns the logged model's URI and id."""
        import mlflow
        import mlflow.pytorch
        import torch

        mlflow.set_tracking_uri(self.tracking_uri)
        # Requirements given, not inferred: inference re-imports the model in a subprocess (about 10 s).
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        top = type(module).__module__.split(".")[0]
        if top not in ("torch", "tune", "tests", "conftest", "__main__"):  # e.g. ultralytics for the yolo task
            from importlib import metadata as packages

            with contextlib.suppress(packages.PackageNotFoundError):
                requirements.append(f"{top}=={packages.version(top)}")
        # Pickle is chosen, not defaulted to (a whole module for any batch size); MLflow's warning about it says
        # nothing the README's Security section does not.
        with _quiet("mlflow.pytorch"), mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(module, name="recommended_model", input_example=input_example,
                                            code_paths=[str(code_dir)], pip_requirements=requirements,
                                            metadata=dict(metadata or {}),
                                            extra_files=[str(path) for path in extra_files] or None,
                                            # a whole nn.Module for any batch size (pt2 export fixes the shapes)
                                            serialization_format="pickle")
        return info.model_uri, info.model_id

    def register_model(self, run_id: str, model_uri: str, model_id: str, alias: str = RECOMMENDED_ALIAS
                       ) -> tuple[str, str]:
        """Register a model logged by ``log_model`` as a new version of the experiment's registered model
        (``registered_model_name``) and move ``alias`` to it; returns the alias's URI (``models:/<name>@<alias>``,
        the latest search's) and the version's (``models:/<name>/<version>``, this search's for good)."""
        name = self.registered_model_name
        try:
            self.client.create_registered_model(
                name, description=f"The recommended model of each search of experiment '{self.experiment_name}'"
                                  " (freeze-depth search); the alias 'recommended' is the latest search's.")
        except MlflowException as err:  # it exists: this search adds a version
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                                   tags={"freeze_search.parent_run": run_id,
                                                         "freeze_search.alias": alias})
        self.client.set_registered_model_alias(name, alias, version.version)
        return f"models:/{name}@{alias}", f"models:/{name}/{version.version}"

    @property
    def registered_model_name(self) -> str:
        """One registered model per experiment, named after it."""
        return self.experiment_name

    # -- trials -------------------------------------------------------------------------------------------
    def start_trial(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        assert self.parent_run_id is not None, "start_search first"
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={PARENT_TAG: self.parent_run_id, "freeze_search.role": "trial", **tags})
        run_id = run.info.run_id
        self.log_params(run_id, params)
        self.log_datasets(run_id, ("train", "val"))  # the test split: only where a run is scored on it
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params are write-once in MLflow: a key already logged for this run is skipped."""
        logged = self._logged_params.setdefault(run_id, set())
        new = [Param(key, str(value)) for key, value in params.items() if key not in logged]
        for start in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[start:start + 100])
        logged.update(p.key for p in new)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        timestamp = _now_ms()
        batch = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        for start in range(0, len(batch), _BATCH):
            self.client.log_batch(run_id, metrics=batch[start:start + _BATCH])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def rename(self, run_id: str, name: str) -> None:
        self.client.update_run(run_id, name=name)

    def end_trial(self, run_id: str, status: str, tags: Mapping[str, Any] = ()) -> None:
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status=status, end_time=_now_ms())


def find_search(tracking_uri: str, experiment_name: str | None, run_id: str | None = None) -> SearchRecord:
    """A search's parent run: ``run_id`` itself, or the latest search of ``experiment_name``. LookupError names
    what is missing."""
    client = _client(tracking_uri)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception as err:  # MlflowException: no such run in this store
            raise LookupError(f"no run {run_id} in {tracking_uri}") from err
        if run.data.tags.get("freeze_search.role") != "search":
            raise LookupError(f"run {run_id} is not a search's parent run (a trial's? its parent: "
                              f"{run.data.tags.get(PARENT_TAG, 'none')})")
    else:
        experiment = client.get_experiment_by_name(experiment_name or "")
        if experiment is None:
            names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise LookupError(f"no experiment '{experiment_name}' in {tracking_uri} (experiments: {names})")
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`freeze_search.role` = 'search'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise LookupError(f"no search in experiment '{experiment_name}'")
        run = runs[0]
    return SearchRecord(run.info.run_id, run.info.status, dict(run.data.params), dict(run.data.tags),
                        split_sizes=_split_sizes(run))


def _split_sizes(run: Any) -> dict[str, int]:
    """The examples of each split a run's datasets hold (``log_datasets``: the split as the input's context, the
    sample count in the dataset's profile)."""
    splits = {context: split for split, context in CONTEXTS.items()}
    sizes = {}
    for given in run.inputs.dataset_inputs if run.inputs else ():
        context = next((tag.value for tag in given.tags if tag.key == DATASET_CONTEXT), None)
        try:
            rows = json.loads(given.dataset.profile or "{}").get("num_rows")
        except (ValueError, AttributeError):
            rows = None
        if context in splits and isinstance(rows, int):
            sizes[splits[context]] = rows
    return sizes


def fetch_trials(tracking_uri: str, parent_run_id: str, extra_keys: Iterable[str] = (),
                 phase: str | None = None) -> list[TrialRecord]:
    """The child runs of a search (of one ``phase``, search or confirm, if given) with their params, tags and
    per-epoch histories of HISTORY_KEYS and ``extra_keys``."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" + (f" and tags.phase = '{phase}'" if phase else "")
    runs = client.search_runs([parent.info.experiment_id], filter_string=query, max_results=10_000)
    records = []
    for run in runs:
        history = {}
        for key in dict.fromkeys([*HISTORY_KEYS, *extra_keys]):
            history[key] = _history(client, run.info.run_id, key)
        name = run.data.tags.get(TRIAL_ID_TAG) or run.info.run_name or run.info.run_id  # the trial id
        records.append(TrialRecord(run_id=run.info.run_id, name=name,
                                   status=run.info.status, params=dict(run.data.params), tags=dict(run.data.tags),
                                   history=history, metrics=dict(run.data.metrics)))
    return records


def finished_confirmations(tracking_uri: str, parent_run_id: str) -> set[tuple[str, int]]:
    """The (candidate, seed) confirmation runs of a search that FINISHED: a resumed --confirm does not repeat them
    (runs a stopped driver left unfinished are KILLED, run again, and left out of the report)."""
    return {(r.tags["candidate"], int(r.params["seed"]))
            for r in fetch_trials(tracking_uri, parent_run_id, (), phase="confirm")
            if r.tags.get("candidate") and r.status == "FINISHED" and "seed" in r.params}

