"""Everything MLflow: the experiment, the parent run of a search, one child run per trial, and the queries
the report reads back. The only module that imports MLflow.

Layout in MLflow: experiment = the search space's ``name``; parent run = the search (its config as params,
the space file as an artifact, the git commit); child run per trial (tag ``mlflow.parentRunId``) with the
trial's config and FreezeSummary as params and its metrics per epoch (step = epoch).
Every run ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tune.config import ReportConfig, SearchConfig
from tune.errors import ConfigError

__all__ = ["TAG_KEYS", "SearchRecord", "SearchTracker", "SystemSampler", "TrialRecord", "TrialRuns", "check_store",
           "default_tracking_uri", "failure_reason", "fetch_trials", "find_search", "finished_confirmations", "flatten",
           "git_commit", "redact", "search_tags", "typed", "ui_command"]

PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "ray.trial_id"  # a trial run's Tune trial id (its name says what it froze, with what)
# Per-epoch metrics the report reads back as histories (the rest stay in MLflow for the UI).
HISTORY_KEYS = ("score", "train_time_s", "epoch_time_s", "peak_mem_mb", "samples_per_s", "test_score")
DATASET_CONTEXT = "mlflow.data.context"  # the input tag MLflow's UI shows beside a dataset
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
RECOMMENDED_ALIAS = "recommended"  # the registered model's alias for the latest search's recommendation
SMOKE_ALIAS = "smoke"  # a --smoke-test search's version: it exercises the registry, and leaves `recommended` alone
_BATCH = 900  # MLflow accepts up to 1,000 metrics and 100 params per log_batch call


def default_tracking_uri(cwd: Path | None = None) -> str:
    """``sqlite:///mlflow.db`` in the working directory, as an absolute URI so Ray workers and later
    commands find the same file."""
    return f"sqlite:///{((cwd or Path.cwd()) / 'mlflow.db').resolve()}"


def _artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Artifacts of a local sqlite store go beside the database file (MLflow's own default is ./mlruns in
    whatever directory the client runs from); a server chooses for itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / "mlartifacts" / experiment_name).as_uri()


def redact(uri: str) -> str:
    """The URI with any user:password removed, for messages and logs."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_STORE_ALLOWED = "sqlite:///PATH, http(s)://HOST:PORT of an MLflow server, or postgresql/mysql/mssql://..."


def check_store(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before any trial, when the tracking store cannot be used: ConfigError within ``timeout_s``."""
    scheme = urlsplit(tracking_uri).scheme
    shown = redact(tracking_uri)
    if scheme == "sqlite":
        if not tracking_uri.startswith("sqlite:///"):
            raise ConfigError("--tracking-uri", shown, "sqlite:///relative/path.db or sqlite:////absolute/path.db")
        folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError("--tracking-uri", shown, "a sqlite file in a writable folder",
                              problem=f"cannot write in {folder}")
        artifacts = folder / "mlartifacts"  # _artifact_location: the runs' files go beside the database
        if artifacts.exists() and not (artifacts.is_dir() and os.access(artifacts, os.W_OK)):
            raise ConfigError("--tracking-uri", shown, "a sqlite file in a folder whose mlartifacts/ this process "
                              "can write", problem=f"{artifacts} is {'a file' if artifacts.is_file() else 'read-only'}")
    elif scheme in ("http", "https"):
        parts = urlsplit(tracking_uri)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        request = urllib.request.Request(urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", "")))
        if parts.username is not None:  # urllib does not read user:password from a URL
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError("--tracking-uri", shown, "a reachable MLflow server", problem=f"{reason}") from None
    elif scheme in ("postgresql", "mysql", "mssql"):
        return  # checked by MLflow itself when the experiment is created
    else:
        raise ConfigError("--tracking-uri", shown, _STORE_ALLOWED, problem="unsupported scheme")


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact(tracking_uri)} in a browser"
    return f"mlflow ui --backend-store-uri {redact(tracking_uri)}"


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``section.key`` strings, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def short(value: Any) -> str:
    """A param for a table or a console line: numbers (or numeric strings, as MLflow keeps params) to 3 digits."""
    if isinstance(value, bool):
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.3g}" if not number.is_integer() else str(int(number))


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


class SearchTracker:
    """The parent run of one search and the child runs of its trials, through an explicit MlflowClient
    (no global active run, so several trackers can coexist, e.g. in tests)."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(experiment_name,
                                                                 _artifact_location(tracking_uri, experiment_name)))
        self.parent_run_id: str | None = None
        self._logged_params: dict[str, set[str]] = {}
        self.datasets: list[Any] = []  # the task's data splits (tune.data.DataSplit): every run's MLflow datasets

    # Tune pickles its callbacks (and so this tracker) into the experiment state for Tuner.restore: keep the
    # URI and ids, not the client.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("client")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("datasets", [])  # a tracker pickled before datasets were logged
        self.client = MlflowClient(tracking_uri=self.tracking_uri)

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
        steps = [m.step for m in self.client.get_metric_history(run.info.run_id, "score")]
        self._logged_params[run.info.run_id] = set(run.data.params)
        return run.info.run_id, max(steps, default=None), finished

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

    def log_model(self, run_id: str, module: Any, input_example: Any, code_dir: Path) -> tuple[str, str]:
        """Log a torch module as an MLflow model of ``run_id`` (with ``code_dir``, the package that defines
        its classes, so it loads without this project installed); returns the logged model's URI and id."""
        import mlflow
        import mlflow.pytorch
        import torch

        mlflow.set_tracking_uri(self.tracking_uri)
        # Requirements given, not inferred: inference re-imports the model in a subprocess (about 10 s).
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        top = type(module).__module__.split(".")[0]
        if top not in ("torch", "tune", "tests", "conftest", "__main__"):  # e.g. ultralytics for the yolo task
            from importlib import metadata

            with contextlib.suppress(metadata.PackageNotFoundError):
                requirements.append(f"{top}=={metadata.version(top)}")
        # Pickle is chosen, not defaulted to (a whole module for any batch size); MLflow's warning about it says
        # nothing the README's Security section does not.
        with _quiet("mlflow.pytorch"), mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(module, name="recommended_model", input_example=input_example,
                                            code_paths=[str(code_dir)], pip_requirements=requirements,
                                            # a whole nn.Module for any batch size (pt2 export fixes the shapes)
                                            serialization_format="pickle")
        return info.model_uri, info.model_id

    def register_model(self, run_id: str, model_uri: str, model_id: str, alias: str = RECOMMENDED_ALIAS) -> str:
        """Register a model logged by ``log_model`` as a new version of the experiment's registered model
        (``registered_model_name``) and move ``alias`` to it; returns the alias's URI
        (``models:/<name>@<alias>``)."""
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
        return f"models:/{name}@{alias}"

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


def search_tags(searched: Iterable[str], objectives: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The parent run's tags that ``SearchRecord`` reads back: what was searched and optimised."""
    return {"freeze_search.searched": json.dumps(list(searched)),
            "freeze_search.objectives": json.dumps([list(pair) for pair in objectives])}


@dataclass(frozen=True)
class SearchRecord:
    """A search's parent run as MLflow holds it, decoded: its config's report rule, what it searched."""

    run_id: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]

    @property
    def name(self) -> str:
        return self.params.get("name", "")

    @property
    def searched(self) -> list[str]:
        return json.loads(self.tags.get("freeze_search.searched", "[]"))

    @property
    def objectives(self) -> list[tuple[str, str]]:
        default = json.dumps(SearchConfig().objective_list)
        return [tuple(pair) for pair in json.loads(self.tags.get("freeze_search.objectives", default))]

    @property
    def report(self) -> ReportConfig:
        default = ReportConfig()
        return ReportConfig(tolerance=float(self.params.get("report.tolerance", default.tolerance)),
                            cost=self.params.get("report.cost", default.cost))

    @property
    def experiment_path(self) -> str:
        """The Ray experiment folder (or URI) that ``--resume`` restores."""
        return self.tags.get("ray.experiment_path", "")


def find_search(tracking_uri: str, experiment_name: str | None, run_id: str | None = None) -> SearchRecord:
    """A search's parent run: ``run_id`` itself, or the latest search of ``experiment_name``. LookupError names
    what is missing."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception as err:  # MlflowException: no such run in this store
            raise LookupError(f"no run {run_id} in {tracking_uri}") from err
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
    return SearchRecord(run.info.run_id, run.info.status, dict(run.data.params), dict(run.data.tags))


def typed(text: str) -> Any:
    """A param as MLflow stored it (a string) → its value; YAML alone would keep '5e-05' a string."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass
class TrialRecord:
    """One child run as the report sees it."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def fetch_trials(tracking_uri: str, parent_run_id: str, extra_keys: Iterable[str] = (),
                 phase: str | None = None) -> list[TrialRecord]:
    """The child runs of a search (of one ``phase``, search or confirm, if given) with their params, tags and
    per-epoch histories of HISTORY_KEYS and ``extra_keys``."""
    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" + (f" and tags.phase = '{phase}'" if phase else "")
    runs = client.search_runs([parent.info.experiment_id], filter_string=query, max_results=10_000)
    records = []
    for run in runs:
        history = {}
        for key in dict.fromkeys([*HISTORY_KEYS, *extra_keys]):
            points = client.get_metric_history(run.info.run_id, key)
            history[key] = sorted((m.step, m.value) for m in points)
        name = run.data.tags.get(TRIAL_ID_TAG) or run.info.run_name or run.info.run_id  # the trial id
        records.append(TrialRecord(run_id=run.info.run_id, name=name,
                                   status=run.info.status, params=dict(run.data.params), tags=dict(run.data.tags),
                                   history=history))
    return records



def finished_confirmations(tracking_uri: str, parent_run_id: str) -> set[tuple[str, int]]:
    """The (candidate, seed) confirmation runs of a search that FINISHED: a resumed --confirm does not repeat them
    (runs a stopped driver left unfinished are KILLED, run again, and left out of the report)."""
    return {(r.tags["candidate"], int(r.params["seed"]))
            for r in fetch_trials(tracking_uri, parent_run_id, (), phase="confirm")
            if r.tags.get("candidate") and r.status == "FINISHED" and "seed" in r.params}


# -- system metrics -----------------------------------------------------------------------------------------
SYSTEM_PREFIX = "system/"  # MLflow's: the UI's "System metrics" section shows these keys


def visible_gpus(value: str | None) -> list[int | str] | None:
    """The GPUs ``CUDA_VISIBLE_DEVICES`` (``value``) shows a process, in its order: NVML indices, or UUIDs
    (``GPU-...``, ``MIG-...``); None when it is unset (every GPU). As CUDA reads it: up to the first entry that
    is neither (or a negative index)."""
    if value is None:
        return None
    found: list[int | str] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.startswith(("GPU-", "MIG-")):
            found.append(entry)
            continue
        try:
            index = int(entry)
        except ValueError:
            break
        if index < 0:
            break
        found.append(index)
    return found


def _nvml_handles(visible: list[int | str] | None) -> list[Any]:
    """NVML's handles of ``visible`` (``visible_gpus``); every GPU's for None. CUDA machines only."""
    import pynvml

    if visible is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    return [pynvml.nvmlDeviceGetHandleByUUID(v) if isinstance(v, str) else pynvml.nvmlDeviceGetHandleByIndex(v)
            for v in visible]


class SystemSampler:
    """A trial's system metrics, sampled by MLflow's own monitors in the trial's process (the Ray worker): CPU
    utilisation and the node's memory, and each of the trial's GPUs (``gpu_0`` its first) where NVML answers. A
    thread samples every ``interval_s`` (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` if set); ``epoch()`` takes
    one more sample and returns the epoch's means as ``system/<name>``, which the trial reports with its epoch's
    metrics and the driver logs to its run (step = epoch). MLflow's SystemMetricsMonitor would log from the worker
    itself, which needs the store within the worker's reach (on a cluster it may not be) and the run's id before
    training."""

    def __init__(self, gpu: bool = False, interval_s: float = 1.0) -> None:
        from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

        self.monitors = [CPUMonitor()]
        if gpu:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            with contextlib.suppress(Exception):  # no pynvml or no driver: no GPU metrics, the rest as usual
                monitor = GPUMonitor()
                # NVML sees every GPU of the node, whatever CUDA_VISIBLE_DEVICES says: keep the trial's own, in
                # its order, so gpu_0 is the trial's cuda:0 (as torch numbers it), not the node's first GPU
                monitor.gpu_handles = _nvml_handles(visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES")))
                self.monitors.append(monitor)
        self.interval_s = MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() or interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        with self._lock:
            for monitor in self.monitors:
                with contextlib.suppress(Exception):  # a monitor's failure never fails the trial
                    monitor.collect_metrics()

    def start(self) -> SystemSampler:
        import psutil

        psutil.cpu_percent()  # CPU utilisation is measured from one call to the next: the first sets the start
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def epoch(self) -> dict[str, float]:
        """The means since the last call, as ``system/<name>``; the samples start again."""
        self._sample()
        with self._lock:
            metrics = {}
            for monitor in self.monitors:
                metrics.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
        return {SYSTEM_PREFIX + key: value for key, value in metrics.items()}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# -- the trials' runs -----------------------------------------------------------------------------------------
# Result keys that describe where and how a trial ran: tags of its MLflow run, not metrics.
TAG_KEYS = ("mem_source", "prefix_cache", "head_start", "node_ip", "node_id", "hostname", "pid", "trial_cpus",
            "trial_gpus", "diverged")


class TrialRuns:
    """One MLflow child run per trial of a search, fed by the search's trial events: the trial's config as params
    (with its FreezeSummary, from its first result), where and how it ran as tags (``TAG_KEYS``), every numeric
    result as a metric (step = epoch); a restored trial goes on in its run and logs no epoch twice; a trial ends
    FINISHED (tagged ``epochs_run``, ``stopped_early`` or ``diverged``; its best epoch's score logged as
    ``best_epoch_score``) or FAILED (with ``failure_reason``). Each event returns a line for the console, or None for a
    run that had already ended."""

    def __init__(self, tracker: SearchTracker, base_params: Mapping[str, Any], epochs: int,
                 searched: Iterable[str] = ()) -> None:
        self.tracker = tracker
        self.base_params = dict(base_params)
        self.epochs = epochs
        self.searched = [key for key in searched if key not in ("freeze", "freeze_start", "freeze_stop")]
        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.last_score: dict[str, float] = {}
        self.best_score: dict[str, float] = {}
        self.ended: set[str] = set()  # trials that finished or failed
        self.diverged: set[str] = set()
        self.closed: set[str] = set()  # trials whose run had already ended when a search was restored

    def run_name(self, freeze_range: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """What a trial's run is called: what it froze and with what, e.g. ``[0, 4) lr=0.0012`` (and its seed, for
        a confirmation run)."""
        keys = [*self.searched, *(["seed"] if "candidate" in tags else [])]
        return " ".join([freeze_range, *(f"{k}={short(params[k])}" for k in keys if k in params)])

    def progress(self) -> str:
        """How far the search is, for a finished trial's console line: the best score so far and its trial."""
        if not self.best_score:
            return ""
        best = max(self.best_score, key=self.best_score.get)
        return f"; best so far {self.best_score[best]:.4f} (trial {best})"

    def run_id(self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The trial's run: found again after a restore (a KILLED one reopens), else created."""
        if trial_id not in self.run_ids:
            found = self.tracker.find_trial(trial_id)
            if found is not None:
                run_id, last_epoch, finished = found
                self.run_ids[trial_id] = run_id
                if last_epoch is not None:
                    self.last_epoch[trial_id] = last_epoch
                if finished:  # it ended before the driver died, after Tune's last snapshot: leave its run be
                    self.closed.add(trial_id)
                return run_id
            self.run_ids[trial_id] = self.tracker.start_trial(
                trial_id, {**self.base_params, **params}, tags={TRIAL_ID_TAG: trial_id, **tags})
        return self.run_ids[trial_id]

    def result(self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, str], result: Mapping[str, Any],
               *, first_since_restore: bool) -> None:
        """An epoch's result (``first_since_restore``: the first after the trial was restored from a checkpoint)."""
        run_id = self.run_id(trial_id, params, tags)
        epoch = int(result["epoch"])
        if first_since_restore and epoch > 1:
            # Restored from a checkpoint. Tune registers a reported checkpoint only after the driver's callbacks
            # (a save call to the worker), so a worker killed in between restarts one checkpoint earlier and
            # replays an epoch MLflow already holds: the tag says where it went on either way.
            self.tracker.set_tags(run_id, {"resumed_at_epoch": epoch})
        if epoch <= self.last_epoch.get(trial_id, -1):
            return  # a retried trial replays no epoch it already logged
        if trial_id not in self.last_epoch:  # the first result carries the FreezeSummary
            freeze_range = result.get("freeze_label", f"[{result['freeze_start']}, {result['freeze_stop']})")
            self.tracker.rename(run_id, self.run_name(freeze_range, params, tags))
            self.tracker.log_params(run_id, {
                "freeze_range": freeze_range,
                "trainable_params": result["trainable_params"], "frozen_params": result["frozen_params"],
                "frozen_flops_share": f"{result['frozen_flops_share']:.4f}"})
            self.tracker.set_tags(run_id, {k: result[k] for k in TAG_KEYS if k in result})
        if result.get("diverged"):
            self.diverged.add(trial_id)
            self.tracker.set_tags(run_id, {"diverged": "true", "diverged_at_epoch": epoch})
        self.last_epoch[trial_id] = epoch
        self.last_score[trial_id] = result["score"]
        if math.isfinite(result["score"]) and result["score"] > self.best_score.get(trial_id, -math.inf):
            self.best_score[trial_id] = result["score"]
        metrics = {k: v for k, v in result.items() if k not in TAG_KEYS and isinstance(v, (int, float))
                   and not isinstance(v, bool) and (epoch > 0 or math.isfinite(v))}  # epoch 0: what was measured
        self.tracker.log_metrics(run_id, metrics, step=epoch)

    def complete(self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str | None:
        self.ended.add(trial_id)
        if trial_id in self.closed:
            return None
        run_id, epochs_run = self.run_id(trial_id, params, tags), self.last_epoch.get(trial_id, 0)
        scores = [m.value for m in self.tracker.client.get_metric_history(run_id, "score") if math.isfinite(m.value)]
        if scores:  # logged at the last step: the run's value in the UI's tables and charts (a restore included)
            self.tracker.log_metrics(run_id, {"best_epoch_score": max(scores)}, step=epochs_run)
        if trial_id in self.diverged:
            self.tracker.end_trial(run_id, "FINISHED", tags={"epochs_run": epochs_run})
            return f"diverged (loss not finite) at epoch {epochs_run}"
        stopped_early = epochs_run < params.get("epochs", self.epochs)  # epochs may be searched
        self.tracker.end_trial(run_id, "FINISHED", tags={"epochs_run": epochs_run, "stopped_early": stopped_early})
        return (f"score {self.last_score.get(trial_id, float('nan')):.4f} after {epochs_run} "
                f"epoch{'s' * (epochs_run != 1)}"
                + (" (stopped early by ASHA)" if stopped_early else ""))

    def error(self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, str], error_file: str
              ) -> str | None:
        self.ended.add(trial_id)
        if trial_id in self.closed:
            return None
        reason = failure_reason(error_file)
        self.tracker.end_trial(self.run_id(trial_id, params, tags), "FAILED",
                               tags={"error_file": error_file, "failure_reason": reason})
        return f"FAILED: {reason}"

    def fail_open(self, trial_id: str, reason: str) -> None:
        """End a trial's run FAILED with ``reason`` if it is still open (a trial Tune stopped after it failed)."""
        if trial_id in self.run_ids and trial_id not in self.ended:
            self.ended.add(trial_id)
            self.tracker.end_trial(self.run_ids[trial_id], "FAILED", tags={"failure_reason": reason})


def failure_reason(error_file: str) -> str:
    """The last line of a trial's traceback that names an exception, e.g. 'RuntimeError: out of memory ...'."""
    try:
        lines = [line.strip() for line in Path(error_file).read_text().splitlines() if line.strip()]
    except OSError:
        return "unknown (no error file)"
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return (named[-1] if named else lines[-1] if lines else "unknown")[:500]
