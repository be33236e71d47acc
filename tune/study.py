"""One search's lifecycle, from its first MLflow run to its last tag: the Study.

    study = Study.prepare(StudyOptions(space_file=Path("search_spaces/digits_freeze.yaml")))  # or ConfigError
    status = study.run()  # FINISHED, FAILED or KILLED: the parent run's status, never left RUNNING

``prepare`` checks everything before Ray starts a trial or MLflow holds a run: the config (loaded, checked against
the task's model, cut-point names resolved once: the checked config carries the resolved space), the tracking
store, the search to resume, the Ray cluster, what a trial asks for against the nodes, the storage path. ``run``
then owns the parent run: created (or reopened with ``--resume``), the search (tune.search), open trials killed, the
confirmation of the top candidates (picked and judged by tune.report, run by tune.search), the report, the
recommended model, the parent's end. ``rebuild_report`` writes a finished search's report again from MLflow alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tune
from tune.config import COST_METRICS, Config, ReportConfig, TrainConfig, load_config
from tune.errors import ConfigError, TrialConfigError, one_line

# torch, Ray and MLflow take seconds to import: they come in once the config file has loaded, so that a mistake in
# it is reported at once. Annotations name their types as strings.
if TYPE_CHECKING:
    from tune import report, tracking
    from tune.records import SearchRecord, TrialRecord
    from tune.tasks import Task

__all__ = ["SMOKE", "Checked", "Study", "StudyOptions", "check_config", "check_report_dir", "check_submission",
           "rebuild_report", "tracking_uri"]

# --smoke-test: a few trials of two epochs (a grid runs once), two candidates confirmed with two seeds; the user's
# own overrides still win.
SMOKE = (("search.num_samples", 4), ("train.epochs", 2), ("search.grace_period", 1))
SMOKE_CONFIRM = {"confirm_seeds": 2, "confirm_top": 2, "confirm_max_seeds": 2}  # at most, where it confirms at all

Say = Callable[[str], None]


def say(line: str) -> None:
    """The search's own lines, as they happen (a Ray Job's log or a pipe shows them at once)."""
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StudyOptions:
    """What a search is asked to do: the space file with its overrides, where it logs and keeps its state."""

    space_file: Path
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


def tracking_uri(given: str | None) -> str:
    from tune import store

    return given or os.environ.get("MLFLOW_TRACKING_URI") or store.default_tracking_uri()


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
    if options.confirm is not None and (options.confirm == 1 or options.confirm < 0):
        raise ConfigError("--confirm", options.confirm, "0 (no confirmation) or an integer >= 2 (seeds per candidate)")
    if options.confirm_top is not None and options.confirm_top < 1:
        raise ConfigError("--confirm-top", options.confirm_top, "an integer >= 1")
    flags = [("report.confirm_seeds", options.confirm), ("report.confirm_top", options.confirm_top)]
    overrides = [*(SMOKE if options.smoke_test else ()), *options.overrides,
                 *((key, value) for key, value in flags if value is not None)]
    cfg = load_config(options.space_file, overrides)
    from tune import freeze, store
    from tune.tasks import absolute_paths, load_task
    from tune.trial import known_metrics

    if options.smoke_test and cfg.report.confirm_seeds:
        given = {key for key, _ in overrides}
        smaller = {key: min(getattr(cfg.report, key), most) for key, most in SMOKE_CONFIRM.items()
                   if f"report.{key}" not in given}
        cfg = dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, **smaller))
    if options.smoke_test and cfg.search.algorithm == "grid" and "search.num_samples" not in dict(options.overrides):
        cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, num_samples=1))  # the grid once
    written = cfg = dataclasses.replace(cfg, task=absolute_paths(cfg.task, Path.cwd()))  # trials run elsewhere
    task = load_task(cfg.task)
    _check_ignored(cfg, task)
    cfg = dataclasses.replace(cfg, space=freeze.check_space(cfg.space, cfg.train, task.build_model()))
    known = known_metrics(task.metric, task.extra_metrics)
    for metric, _ in cfg.search.objective_list:
        if metric not in known:
            raise ConfigError(f"search.objectives.{metric}", metric, "one of " + ", ".join(known))
    store.check_store(tracking_uri(options.tracking_uri))
    return Checked(cfg, task, written)


def _check_ignored(cfg: Config, task: Any) -> None:
    """A train key the task's own trial does not read, set or searched away from its default: refused."""
    for key, instead in (task.ignores or {}).items():
        if key in cfg.space:
            raise ConfigError(f"space.{key}", cfg.space[key], f"no space for it with the {task.name} task "
                              f"(its trainer does not read train.{key}; instead: {instead})")
        value, default = getattr(cfg.train, key), getattr(TrainConfig, key)
        if value != default:
            raise ConfigError(f"train.{key}", value, f"{default!r} with the {task.name} task (its trainer does not "
                              f"read it; instead: {instead})")


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
    space = options.space_file.resolve()
    if not space.is_relative_to(project_dir):
        raise ConfigError("--space", str(options.space_file), f"a space file inside the project ({project_dir}), "
                                                              "which is uploaded as the job's working directory")
    check_config(options)
    return str(space.relative_to(project_dir))


class Study:
    """One search of one config. Build it with ``prepare`` (every check), then ``run`` it once."""

    def __init__(self, options: StudyOptions, checked: Checked, *, resume: SearchRecord | None,
                 address: str | None, say: Say = say) -> None:
        self.options, self.checked, self.resume, self.address, self.say = options, checked, resume, address, say
        self.cfg, self.task = checked.cfg, checked.task
        self.tracking_uri = tracking_uri(options.tracking_uri)
        self.tracker: tracking.SearchTracker | None = None
        self.head_probe: dict[str, Any] | None = None  # the fitted probe's state (tune.probe.Probe.state)

    @classmethod
    def prepare(cls, options: StudyOptions, say: Say = say) -> Study:
        """Check everything a search needs, in the order a user would fix it; ConfigError on the first problem.
        Connects to the cluster (if any) and makes the storage folder; starts no trial and writes no run."""
        checked = check_config(options)
        cfg = checked.cfg
        from tune import search

        resume = _resume_point(tracking_uri(options.tracking_uri), cfg.name) if options.resume else None
        address = options.address or os.environ.get("RAY_ADDRESS")  # a Ray Job or KubeRay sets RAY_ADDRESS
        if address:
            search.connect(address, "--address" if options.address else "RAY_ADDRESS")
        for warning in search.check_resources(cfg, on_cluster=bool(address)):
            warn(f"warning: {warning}")
        check_report_dir(options.report_dir)
        search.check_storage(options.storage_path)  # last: it makes the folder
        return cls(options, checked, resume=resume, address=address, say=say)

    @property
    def searched(self) -> list[str]:
        return list(self.cfg.space)

    def run(self) -> str:
        """The whole search; returns how the parent run ended: FINISHED (a trial finished), FAILED (none did, or an
        error, re-raised), KILLED (Ctrl-C: open runs KILLED too; ``--resume`` goes on)."""
        from tune import prefix_cache, search, store, tracking
        from tune.data import describe

        cfg, options = self.cfg, self.options
        self.tracker = tracker = tracking.SearchTracker(self.tracking_uri, cfg.name, datasets=describe(self.task))
        parent_id = self._open_parent()
        planned = (f"a grid of {search.grid_size(cfg.space)} x {cfg.search.num_samples}"
                   if cfg.search.algorithm == "grid" else str(cfg.search.num_samples))
        self.say(f"search {cfg.name}: {planned} trials of up to {cfg.train.epochs} epochs over "
                 f"{', '.join(self.searched)}; MLflow parent run {parent_id}")
        status, reason = "FAILED", "the search failed before this trial ended"
        system = None
        try:
            system = tracker.monitor_system()  # the driver's machine, on the parent run
            self.head_probe = self._fit_probe()
            outcome = search.run(cfg, tracker, storage_path=options.storage_path, address=self.address,
                                 verbose=int(options.verbose), head_probe=self.head_probe,
                                 restore_from=self.resume.experiment_path if self.resume else None)
            tracker.kill_open_trials()
            header = (f"{outcome.trials} trials in {outcome.wall_time_s:.0f} s, {outcome.errored} failed"
                      + (f"; the time budget of {cfg.search.time_budget_s:g} s stopped the search: trials still "
                         "running then are marked KILLED, later ones never started" if outcome.budget_reached else "")
                      + ".\n\n")
            checkpoints = dict(outcome.best_checkpoints)
            if cfg.report.confirm_seeds and outcome.errored < outcome.trials:
                checkpoints.update(self._confirm())
            if self.task.has_test:  # chosen on validation first; then, once, measured on test
                chosen, records = _build_report(tracker, self.searched, cfg.search.objective_list, cfg.report)
                self._score_test(chosen, records, checkpoints)
            built = _write_report(tracker, self.searched, cfg.search.objective_list, cfg.report, options.report_dir,
                                  header, self.say)
            self._log_summary(built, outcome)
            self._log_recommended_model(built, outcome.best_checkpoints)
            status = "FINISHED" if outcome.errored < outcome.trials else "FAILED"
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted (Ctrl-C)"
        except TrialConfigError as err:  # the first trials' bad input: the search stopped there
            reason = f"the search stopped for bad input: {err}"
            tracker.set_tags(tracker.parent_run_id, {"failure_reason": str(err)})
            raise
        finally:
            try:
                if system is not None:
                    system.finish()
            finally:
                tracker.finish_search(status, reason=reason)
        if status != "KILLED":
            self.say(f"\nCompare the runs: {store.ui_command(self.tracking_uri)}  (experiment '{cfg.name}')")
            cache = prefix_cache.describe(options.storage_path)
            if cache:
                self.say(cache)
        return status

    def _open_parent(self) -> str:
        from tune.provenance import git_commit
        from tune.records import flatten, search_tags

        tracker = self.tracker
        if self.resume is not None:
            tracker.reopen_search(self.resume.run_id)
            # Runs the dead driver left open: the trials Tune saved reopen theirs when they go on; a trial started
            # after Tune's last snapshot is lost with the driver and stays KILLED (Tune samples a new one).
            tracker.kill_open_trials("the driver stopped before this trial ended")
            return self.resume.run_id
        commit = git_commit(Path(tune.__file__).resolve().parents[1])
        space_file = self.options.space_file
        return tracker.start_search(
            run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
            params=flatten(self.checked.written.as_dict()),  # the config as written: names unresolved
            tags={"space_file": str(space_file), "smoke_test": str(self.options.smoke_test),
                  "driver_hostname": socket.gethostname(), "driver_pid": str(os.getpid()),
                  **search_tags(self.searched, self.cfg.search.objective_list),
                  **({"mlflow.source.git.commit": commit} if commit else {})},
            artifacts=[space_file])

    def _fit_probe(self) -> dict[str, Any] | None:
        """The linear probe every trial's head starts from (``train.head_init: probe``, set or searched), fitted
        once here, in the driver, for every trial and node (its state travels with the trials); its validation score
        is the reference of the report (``probe_score`` on the parent run). None where no trial starts from it."""
        import torch

        from tune.train import fit_head_probe

        if self.cfg.train.head_init != "probe" and "head_init" not in self.cfg.space:
            return None
        started = time.perf_counter()
        # on the driver's CPU: a cluster's head node may have no GPU, and the driver holds no CUDA context for the
        # whole search (a Ray task with a trial's GPU would be faster for a large model on much data)
        fitted = fit_head_probe(self.task, self.cfg.train, torch.device("cpu"))
        if fitted is None:  # a task with its own trial, or no classifier: the head starts as the model builds it
            return None
        parent_id = self.tracker.parent_run_id
        self.tracker.log_metrics(parent_id, {"probe_score": fitted.score, "probe_l2": fitted.l2,
                                             "probe_fit_s": time.perf_counter() - started}, step=0)
        self.say(f"linear probe on the frozen features ({fitted.classifier}, L2 {fitted.l2:g} chosen on validation): "
                 f"{self.task.metric} {fitted.score:.4f}; every trial's head starts there")
        return fitted.state()

    def _confirm(self) -> dict[str, Any]:
        """Race the candidates on the same fresh seeds (``tune.race``): ``report.confirm_seeds`` each, then one more
        at a time for the undecided ones, up to ``report.confirm_max_seeds``. After a resume the (candidate, seed)
        runs that finished before the stop are not run again, and the rounds replay the same decisions. Their
        best-epoch checkpoints by trial."""
        from tune import race, report, search, tracking

        cfg, options, parent_id, rule = self.cfg, self.options, self.tracker.parent_run_id, self.cfg.report
        records = tracking.fetch_trials(self.tracking_uri, parent_id)
        candidates = report.candidates(records, rule, self.searched, rule.confirm_top)
        if not candidates:  # nothing to confirm: no trial finished, or the scores cannot tell the trials apart
            return {}
        seeds = [cfg.train.seed + i for i in range(1, rule.seed_budget + 1)]
        done = tracking.finished_confirmations(self.tracking_uri, parent_id) if self.resume else set()
        checkpoints: dict[str, Any] = {}
        ranges = {r.name: r.freeze_range for r in report.summarise(records)}
        self.say(f"confirming {len(candidates)} candidates in a race on paired seeds: seeds "
                 f"{seeds[:rule.confirm_seeds]} first, then one at a time for the undecided, up to {len(seeds)}"
                 + (f" ({len(done)} runs finished before the resume)" if done else ""))

        def run_round(plan: Mapping[str, Sequence[int]], number: int) -> list[race.Candidate]:
            if number > 1:
                self.say(f"round {number}: seed {', '.join(map(str, sorted({s for v in plan.values() for s in v})))} "
                         f"for freeze {', '.join(ranges.get(name, name) for name in plan)}")
            outcome = search.confirm(cfg, self.tracker, {name: candidates[name] for name in plan},
                                     next(iter(plan.values())), storage_path=options.storage_path,
                                     address=self.address, verbose=int(options.verbose), done=done,
                                     head_probe=self.head_probe, round_number=number)
            self.tracker.kill_open_trials()
            if outcome is not None:
                checkpoints.update(outcome.best_checkpoints)
            runs = report.summarise(tracking.fetch_trials(self.tracking_uri, parent_id, phase="confirm"))
            return report.confirmation_candidates(runs, rule.cost, self.searched)

        decision = race.race(list(candidates), seeds, rule.confirm_seeds, run_round, rule.tolerance, rule.confidence)
        if decision is not None:
            state = "decided" if decision.decided else f"undecided after {len(decision.best.scores)} seeds"
            self.say(f"confirmation {state}: freeze {decision.chosen.freeze_range}")
        return checkpoints

    def _score_test(self, built: report.Report, records: list, checkpoints: Mapping[str, Any]) -> None:
        """Score the recommended configuration on the task's test split, once: its confirmation runs' best-epoch
        checkpoints (after a confirmation) or its trial's; on a cluster or with GPU trials in a Ray task with a
        trial's resources (search.score_test).
        ``test_score`` (the primary metric) and the task's other metrics as ``test_*`` go to each scored run, at its
        checkpoint's epoch, with where it was scored (tags ``test_hostname``, ``test_pid``). Nothing is chosen on
        them."""
        from tune import search

        if built.chosen is None:
            return
        names = list(built.confirmed_choice.runs) if built.confirmed_choice else [built.chosen.name]
        run_ids = {r.name: r.run_id for r in records}
        wanted = {}
        for name in names:
            if name in checkpoints and name in run_ids:
                wanted[name] = checkpoints[name]
            else:
                warn(f"no checkpoint of trial {name}: not scored on the test split")
        metric = self.task.metric
        scored = search.score_test(self.cfg, self.task, wanted, address=self.address,
                                   verbose=int(self.options.verbose))
        for name, (metrics, epoch, where) in scored.items():
            renamed = {"test_score": metrics[metric],
                       **{f"test_{k.removeprefix('val_')}": v for k, v in metrics.items() if k != metric}}
            self.tracker.log_metrics(run_ids[name], renamed, step=epoch)
            self.tracker.set_tags(run_ids[name], {"test_hostname": where["hostname"], "test_pid": where["pid"]})
            self.tracker.log_datasets(run_ids[name], ("test",))
        if scored:
            self.say(f"scored the recommendation on the test split ({len(scored)} checkpoint{'s' * (len(scored) > 1)})")

    def _log_summary(self, built: report.Report, outcome: Any) -> None:
        """The search in a few numbers on its parent run, so that searches compare in MLflow's runs table and
        charts: the best and the recommended score (with its interval after a confirmation), the test score, the
        recommendation's epoch time and memory, how the trials ended, and the compute: trial-epochs trained in the
        search and in the confirmation (epoch 0, a start scored before training, is none)."""
        from tune import report

        search = built.search
        summary: dict[str, float] = {"trial_epochs_search": sum(r.epochs_run for r in search),
                                     "trial_epochs_confirm": sum(r.epochs_run for r in built.confirmation),
                                     "trials_finished": sum(r.status == "FINISHED" for r in search),
                                     "trials_stopped_early": sum(r.stopped_early for r in search),
                                     "trials_failed": outcome.errored}
        if search:
            summary["best_score"] = max(r.score for r in search)
        chosen = built.chosen
        if chosen is not None:
            summary.update(recommended_epoch_time_s=chosen.epoch_time_s, recommended_peak_mem_mb=chosen.peak_mem_mb,
                           recommended_freeze_stop=chosen.freeze_key[1], recommended_score=chosen.score)
            if built.confirmed_choice is not None:
                low, high = built.confirmed_choice.interval
                summary.update(recommended_score=built.confirmed_choice.mean, recommended_score_low=low,
                               recommended_score_high=high)
            tested = report.test_scores(built)
            if tested:
                summary["test_score"] = statistics.fmean(tested)
        self.tracker.log_metrics(self.tracker.parent_run_id,
                                 {k: v for k, v in summary.items() if not math.isnan(v)}, step=0)

    def _log_recommended_model(self, built: report.Report, checkpoints: dict[str, Any]) -> None:
        """The recommended trial's best-epoch weights as an MLflow model of the parent run."""
        if built.chosen is None:
            return
        chosen = built.chosen.name
        checkpoint = checkpoints.get(chosen)
        if checkpoint is None:
            warn(f"no checkpoint of trial {chosen}: no model logged")
            return
        from tune import tracking
        from tune.trial import model_from_checkpoint

        block_model, _ = model_from_checkpoint(self.task, checkpoint)
        parent_id = self.tracker.parent_run_id
        example = block_model.example_input  # keyword tensors (a text model) give no input example
        uri, model_id = self.tracker.log_model(parent_id, block_model.module,
                                               None if isinstance(example, Mapping) else example.numpy(),
                                               Path(tune.__file__).parent)
        self.tracker.set_tags(parent_id, {"recommended_model_uri": uri})
        alias = tracking.SMOKE_ALIAS if self.options.smoke_test else tracking.RECOMMENDED_ALIAS
        try:
            registered = self.tracker.register_model(parent_id, uri, model_id, alias)
        except Exception as err:  # a registry that refuses (permissions, a store without one) fails no search
            warn(f"warning: the model registry did not take the recommended model ({one_line(err)}); "
                 f"it is logged all the same: {uri}")
            self.say(f"Recommended model (trial {chosen}, its best epoch): {uri}")
            return
        self.tracker.set_tags(parent_id, {"registered_model_uri": registered})
        self.say(f"Recommended model (trial {chosen}, its best epoch): {registered}  (this search's version: {uri})")


def _resume_point(uri: str, experiment: str) -> SearchRecord:
    """The latest search of ``experiment`` if it did not finish and its Ray experiment folder can be restored."""
    from tune import search, tracking

    try:
        record = tracking.find_search(uri, experiment)
    except LookupError as err:
        raise ConfigError("--resume", experiment, "an experiment with an unfinished search", problem=str(err)) from None
    if record.status == "FINISHED":
        raise ConfigError("--resume", experiment, "an experiment whose latest search did not finish",
                          problem=f"search {record.run_id} finished")
    if not search.can_restore(record.experiment_path):
        raise ConfigError("--resume", experiment, "a search whose Ray experiment folder is still there",
                          problem=f"cannot restore {record.experiment_path or 'an unrecorded path'}")
    return record


def _build_report(tracker: tracking.SearchTracker, searched: list[str], objectives: list[tuple[str, str]],
                  rule: ReportConfig, header: str = "") -> tuple[report.Report, list[TrialRecord]]:
    """The report of the search as MLflow holds it, and the trial records it was built from."""
    from tune import report, tracking

    records = tracking.fetch_trials(tracker.tracking_uri, tracker.parent_run_id,
                                    extra_keys=[m for m, _ in objectives])
    reference = tracker.search_metrics().get("probe_score")
    return report.build_report(records, searched=searched, objectives=objectives, tolerance=rule.tolerance,
                               cost=rule.cost, header=header, reference=reference,
                               confidence=rule.confidence), records


def _write_report(tracker: tracking.SearchTracker, searched: list[str], objectives: list[tuple[str, str]],
                  rule: ReportConfig, report_dir: Path, header: str, say: Say) -> report.Report:
    """Build the report from MLflow, write it (text, plots, summary) under ``report_dir`` and into the parent run,
    tag the parent with the recommendation, and print it."""
    from tune import report

    parent_id = tracker.parent_run_id
    built, records = _build_report(tracker, searched, objectives, rule, header)
    name = tracker.experiment_name
    out_dir = report_dir / f"{name}-{parent_id[:8]}"
    files = report.write_report(built, [r for r in records if "candidate" not in r.tags], out_dir, name)
    tracker.log_files(parent_id, files, "report")
    chosen = built.chosen  # after --confirm, the confirmed one
    if chosen is not None:
        tracker.set_tags(parent_id, {"recommended_trial": chosen.name, "recommended_freeze_range": chosen.freeze_range,
                                     "best_score": f"{built.recommendation.best.score:.4f}"})
    say("\n" + built.text)
    say(f"\nReport, plots and summary: {out_dir}/ (also artifacts of the parent run, under report/)")
    return built


def rebuild_report(uri: str | None, *, experiment: str, run_id: str | None = None, tolerance: float | None = None,
                   cost: str | None = None, report_dir: Path = Path("reports"), say: Say = say) -> report.Report:
    """A logged search's report again, from MLflow alone (``run_search.py report``); ``tolerance`` and ``cost``
    override the rule the search was run with."""
    from tune import store, tracking

    uri = tracking_uri(uri)
    if cost is not None and cost not in COST_METRICS:
        raise ConfigError("--cost", cost, "one of " + ", ".join(COST_METRICS))
    if tolerance is not None and not tolerance >= 0:
        raise ConfigError("--tolerance", tolerance, "a number >= 0")
    store.check_store(uri)
    check_report_dir(report_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError("--tracking-uri", uri, "an existing MLflow store", problem="no such file")
    try:
        record = tracking.find_search(uri, experiment, run_id)
    except LookupError as err:
        raise ConfigError("--run-id" if run_id else "--experiment", run_id or experiment,
                          "a search logged in this tracking store", problem=str(err)) from None
    tracker = tracking.SearchTracker(uri, record.name or experiment, parent_run_id=record.run_id)
    logged = record.report
    rule = dataclasses.replace(logged, tolerance=logged.tolerance if tolerance is None else tolerance,
                               cost=cost or logged.cost)
    return _write_report(tracker, record.searched, record.objectives, rule, report_dir, "", say)
