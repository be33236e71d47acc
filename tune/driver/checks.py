"""Everything a search is checked against before it starts, in the order a user would fix it: the options
(StudyOptions), the config against its task's model, the tracking store, the search to resume, the report's
folder, a submission. Each problem is a ConfigError naming the key, the value and what is allowed; nothing here
starts a trial or writes a run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.driver.smoke import depth_points_first, smoke_overrides, smoke_points, smoke_sized
from tune.errors import ConfigError
from tune.settings.config import Config, TrainConfig
from tune.settings.fields import check_report_value
from tune.settings.loading import bundled_spaces, experiment_name, load_config, space_file
from tune.tracker.store import tracking_uri

if TYPE_CHECKING:
    from tune.reporting.records import SearchRecord
    from tune.tasks import Task

__all__ = ["Checked", "StudyOptions", "check_config", "check_report_dir", "check_submission", "resume_point"]


@dataclass(frozen=True)
class StudyOptions:
    """What a search is asked to do: the space file with its overrides, where it logs and keeps its state."""

    space_file: Path | Mapping[str, Any]  # a YAML file, a bundled space's name, or the file's content as a mapping
    overrides: Sequence[tuple[str, Any]] = ()  # (dotted key, value), as from --set
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db here
    storage_path: str = "ray_results"
    report_dir: Path = Path("reports")
    address: str | None = None  # an existing Ray cluster; None: $RAY_ADDRESS, else a local Ray
    confirm: int | None = None  # seeds per candidate, 0 for no confirmation; None: the config's report.confirm_seeds
    confirm_top: int | None = None  # None: the config's report.confirm_top
    resume: bool = False
    smoke_test: bool = False
    verbose: bool = False  # Tune's and Optuna's own console lines too
    task: Any = None  # a tune.Task or a function returning one, in place of the config's task (tune.FreezeSearch)


@dataclass(frozen=True)
class Checked:
    """A search's config checked against its task: names resolved in ``cfg.space``; ``written`` is the config as the
    space file and the overrides give it (cut-point names as written), what the parent run logs as its params."""

    cfg: Config
    task: Task
    written: Config


def check_config(options: StudyOptions) -> Checked:
    """The search's config checked against its task (names resolved), and the task; the tracking store usable.
    Raises ConfigError naming the key, the value and what is allowed."""
    for flag, key, value in (("--confirm", "confirm_seeds", options.confirm),
                             ("--confirm-top", "confirm_top", options.confirm_top)):
        if value is not None:
            check_report_value(key, value, flag)
    flags = [("report.confirm_seeds", options.confirm), ("report.confirm_top", options.confirm_top)]
    given = [*options.overrides, *((key, value) for key, value in flags if value is not None)]
    smoke = smoke_overrides(options.space_file, given) if options.smoke_test else ()  # tune.driver.smoke
    cfg = load_config(options.space_file, [*smoke, *given])
    from tune.tasks import absolute_paths, load_task, task_config
    from tune.tracker import store
    from tune.training import space_freezes
    from tune.training.trial import known_metrics

    if options.smoke_test:
        cfg = smoke_sized(cfg, given, options.overrides)
    if options.task is not None:
        cfg = dataclasses.replace(cfg, task=task_config(options.task))
    written = cfg = dataclasses.replace(cfg, task=absolute_paths(cfg.task, Path.cwd()))  # trials run elsewhere
    task = load_task(cfg.task)
    if options.task is not None and "name" not in dict(options.overrides) and _bundled(options.space_file):
        # a bundled space's name is not the user's: their task names the experiment (a space of their own keeps its)
        named = experiment_name(task.name, cfg.name)
        cfg, written = dataclasses.replace(cfg, name=named), dataclasses.replace(written, name=named)
    _check_ignored(cfg, task)
    _check_precision(cfg)
    block_model = task.build_model()
    space = space_freezes.check_space(cfg.space, cfg.train, block_model, cfg.fixed_in_space)
    cfg = dataclasses.replace(cfg, space=space)
    from tune.training import adapter

    adapter.check(cfg, task, block_model, space_freezes.sampled_freezes(cfg.space, cfg.train, block_model))
    from tune.driver.preflight import preflight
    from tune.tasks.base import classification_metrics

    probed = cfg.train.head_init == "probe" or "head_init" in cfg.space
    preflight(task, block_model, class_labels=(probed and not task.keeps_head)
              or task.evaluate is classification_metrics)
    if options.smoke_test and smoke_points(options.overrides) and cfg.search.algorithm != "grid":
        cfg, written = depth_points_first(cfg, written)  # a grid runs every depth already
    if cfg.search.points_to_evaluate:
        points = space_freezes.check_points(cfg.search.points_to_evaluate, cfg.space, block_model)
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, points_to_evaluate=points))
    known = known_metrics(task.metric, task.extra_metrics)
    for metric, _ in cfg.search.objective_list:
        if metric not in known:
            raise ConfigError(f"search.objectives.{metric}", metric, "one of " + ", ".join(known))
    store.check_store(tracking_uri(options.tracking_uri))
    return Checked(cfg, task, written)


def _bundled(space: Any) -> bool:
    """Whether ``space`` is one of the spaces that come with the project (not a mapping or a file of the user's)."""
    if isinstance(space, Mapping):
        return False
    path = Path(space).resolve()
    return any(path == bundled.resolve() for bundled in bundled_spaces().values())


def _check_ignored(cfg: Config, task: Any) -> None:
    """A train key the task's own trial does not read, searched or written (even as its default value: the yolo
    task's Detect head has no start of train.head_init's, probe included): refused."""
    for key, instead in (task.ignores or {}).items():
        if key in cfg.space:
            raise ConfigError(f"space.{key}", cfg.space[key], f"no space for it with the {task.name} task "
                              f"(its trainer does not read train.{key}; instead: {instead})")
        value = getattr(cfg.train, key)
        if key in cfg.train_written or value != getattr(TrainConfig, key):
            raise ConfigError(cfg.train_key(key), value, f"the key left out with the {task.name} task (its trainer "
                              f"does not read it; instead: {instead})")


def _check_precision(cfg: Config) -> None:
    """16-mixed where every trial trains on the CPU (train.device cpu, or no GPU per trial): refused now, not in
    each trial."""
    searched = cfg.space.get("precision")
    wanted = [cfg.train.precision, *getattr(searched, "values", ())]
    on_cpu = cfg.train.device == "cpu" or cfg.search.gpus_per_trial <= 0
    if "16-mixed" in wanted and on_cpu:
        key = "space.precision" if "16-mixed" in getattr(searched, "values", ()) else cfg.train_key("precision")
        raise ConfigError(key, "16-mixed", "32, bf16-mixed or auto where trials train on the CPU (16-mixed is float16 "
                          "with a GradScaler: CUDA only; give trials a GPU with search.gpus_per_trial)")


def check_report_dir(report_dir: Path, key: str = "--report-dir") -> None:
    """The report's folder: a folder this process can write, or one it can make (the nearest existing folder above
    it writable); checked before a search starts, made once the report is written."""
    def refused(problem: str) -> ConfigError:
        return ConfigError(key, str(report_dir), "a folder this process can write, or a new folder's path",
                           problem=problem)

    path = Path(report_dir).expanduser().absolute()
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as err:  # a folder on the way this process may not look into
        raise refused(err.strerror or type(err).__name__) from None
    if not existing.is_dir():
        raise refused(f"{existing} is a file")
    try:  # a file made and gone at once: os.access says yes to root even where the kernel says no (/proc)
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise refused(f"cannot write in {existing}") from None


def check_submission(options: StudyOptions, project_dir: Path) -> str:
    """A search to submit as a Ray Job, checked here (``check_config``) rather than on the cluster; returns the space
    file's path inside ``project_dir``, which the job gets as its working directory."""
    if not (options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ConfigError("--tracking-uri", None, "an MLflow server the cluster reaches, e.g. http://HOST:5000 "
                                                  "(a local sqlite file would stay inside the job's folder)")
    storage = options.storage_path
    if "://" not in storage and not Path(storage).is_absolute():
        raise ConfigError("--storage-path", storage, "an absolute folder every node shares, or a URI (s3://...)")
    if isinstance(options.space_file, Mapping):
        raise ConfigError("--space", "<mapping>", "a space file inside the project (a Ray Job reads it there)")
    space = space_file(options.space_file).resolve()
    if not space.is_relative_to(project_dir):
        raise ConfigError("--space", str(options.space_file), f"a space file inside the project ({project_dir}), "
                                                              "which is uploaded as the job's working directory")
    check_config(options)
    return str(space.relative_to(project_dir))


def resume_point(uri: str, experiment: str) -> SearchRecord:
    """The latest search of ``experiment`` if it did not finish and its Ray experiment folder can be restored."""
    from tune.driver import tuner
    from tune.tracker import tracking

    try:
        record = tracking.find_search(uri, experiment)
    except LookupError as err:
        raise ConfigError("--resume", experiment, "an experiment with an unfinished search", problem=str(err)) from None
    if record.status == "FINISHED":
        raise ConfigError("--resume", experiment, "an experiment whose latest search did not finish",
                          problem=f"search {record.run_id} finished")
    if not tuner.can_restore(record.experiment_path):
        raise ConfigError("--resume", experiment, "a search whose Ray experiment folder is still there",
                          problem=f"cannot restore {record.experiment_path or 'an unrecorded path'}")
    return record


