"""One search's lifecycle, from its first MLflow run to its last tag: the Study.

    study = Study.prepare(StudyOptions(space_file="digits_freeze"))  # or ConfigError (tune.driver.checks)
    status = study.run()  # FINISHED, FAILED or KILLED: the parent run's status, never left RUNNING

(The public face of it is tune.FreezeSearch, tune/api.py.)

``prepare`` checks everything before Ray starts a trial or MLflow holds a run (tune.driver.checks: the config against
the task's model, cut-point names resolved once, the tracking store, the search to resume; tune.driver.cluster: the Ray
cluster, what a trial asks for against the nodes, the storage path). ``run``
then owns the parent run: created (or reopened with ``--resume``), the search (tune.driver.tuner), open trials killed,
the confirmation of the top candidates (picked and judged by tune.reporting.report, run by tune.driver.tuner), the
report, the recommended model, the parent's end. ``rebuild_report`` writes a finished search's report again from MLflow
alone.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tune.driver.checks import Checked, StudyOptions, check_config, check_report_dir, resume_point
from tune.errors import ConfigError, TrialConfigError, one_line
from tune.log import say, warn
from tune.result import SearchResult
from tune.settings.fields import COST_METRICS
from tune.settings.loading import space_file
from tune.tracker.store import tracking_uri

# torch, Ray and MLflow take seconds to import: they come in once the config file has loaded, so that a mistake in
# it is reported at once. Annotations name their types as strings.
if TYPE_CHECKING:
    from tune.reporting import report
    from tune.reporting.records import SearchRecord, TrialRecord
    from tune.tracker import tracking

__all__ = ["Study", "rebuild_report"]

Say = Callable[[str], None]


class Study:
    """One search of one config. Build it with ``prepare`` (every check), then ``run`` it once."""

    def __init__(self, options: StudyOptions, checked: Checked, *, resume: SearchRecord | None,
                 address: str | None, say: Say = say) -> None:
        self.options, self.checked, self.resume, self.address, self.say = options, checked, resume, address, say
        self.cfg, self.task = checked.cfg, checked.task
        self.tracking_uri = tracking_uri(options.tracking_uri)
        self.tracker: tracking.SearchTracker | None = None
        self.head_probe: dict[str, Any] | None = None  # the fitted probe's state (tune.training.probe.Probe.state)
        self.probe_score: float | None = None
        self.model_uri: str | None = None  # the recommended model, once logged

    def _build_report(self, records: list, header: str) -> report.Report:
        from tune.reporting import report

        rule = self.cfg.report
        val_size = next((d.rows for d in self.tracker.datasets if d.split == "val"), None) if self.tracker else None
        return report.build_report(records, searched=self.searched, objectives=self.cfg.search.objective_list,
                                   tolerance=rule.tolerance, cost=rule.cost, header=header,
                                   reference=self.probe_score, confidence=rule.confidence,
                                   budget=rule.seed_budget, val_size=val_size)

    @classmethod
    def prepare(cls, options: StudyOptions, say: Say = say) -> Study:
        """Check everything a search needs, in the order a user would fix it; ConfigError on the first problem.
        Connects to the cluster (if any) and makes the storage folder; starts no trial and writes no run."""
        checked = check_config(options)
        cfg = checked.cfg
        from tune.driver import cluster

        resume = resume_point(tracking_uri(options.tracking_uri), cfg.name) if options.resume else None
        address = options.address or os.environ.get("RAY_ADDRESS")  # a Ray Job or KubeRay sets RAY_ADDRESS
        if address:
            cluster.connect(address, "--address" if options.address else "RAY_ADDRESS")
        for warning in cluster.check_resources(cfg, on_cluster=bool(address)):
            warn(f"warning: {warning}")
        check_report_dir(options.report_dir)
        cluster.check_storage(options.storage_path)  # last: it makes the folder
        return cls(options, checked, resume=resume, address=address, say=say)

    @property
    def searched(self) -> list[str]:
        return list(self.cfg.space)

    def run(self) -> SearchResult:
        """The whole search; returns its result, with how the parent run ended: FINISHED (a trial finished), FAILED
        (none did, or an error, re-raised), KILLED (Ctrl-C: open runs KILLED too; ``--resume`` goes on)."""
        from tune.driver import tuner
        from tune.tracker import store, tracking
        from tune.tracker.datasets import describe
        from tune.training import prefix_cache

        cfg, options = self.cfg, self.options
        self.tracker = tracker = tracking.SearchTracker(self.tracking_uri, cfg.name, datasets=describe(self.task))
        parent_id = self._open_parent()
        planned = (f"a grid of {tuner.grid_size(cfg.space)} x {cfg.search.num_samples}"
                   if cfg.search.algorithm == "grid" else str(cfg.search.num_samples))
        self.say(f"search {cfg.name}: {planned} trials of up to {cfg.train.epochs} epochs over "
                 f"{', '.join(self.searched)}; MLflow parent run {parent_id}")
        status, reason = "FAILED", "the search failed before this trial ended"
        system = built = report_path = None
        try:
            system = tracker.monitor_system()  # the driver's machine, on the parent run
            self.head_probe = self._fit_probe()
            outcome = tuner.run(cfg, tracker, storage_path=options.storage_path, address=self.address,
                                 verbose=int(options.verbose), head_probe=self.head_probe,
                                 restore_from=self.resume.experiment_path if self.resume else None)
            tracker.kill_open_trials()
            header = (f"{outcome.trials} trials in {outcome.wall_time_s:.0f} s, {outcome.errored} failed"
                      + (f"; the time budget of {cfg.search.time_budget_s:g} s stopped the search: trials still "
                         "running then are marked KILLED, later ones never started" if outcome.budget_reached else "")
                      + ".\n\n")
            checkpoints = dict(outcome.best_checkpoints)
            objectives = [m for m, _ in cfg.search.objective_list]
            # once: the search's trials (a resumed race's earlier rounds come with the race's own fetch)
            records = tracking.fetch_trials(self.tracking_uri, parent_id, extra_keys=objectives, phase="search")
            if cfg.report.confirm_seeds and outcome.errored < outcome.trials:
                confirmed, confirm_records = self._confirm(records)
                checkpoints.update(confirmed)
                records += confirm_records
            built = self._build_report(records, header)
            if self.task.has_test and built.chosen is not None:  # chosen on validation first; then, once, on test
                self._score_test(built, records, checkpoints)
                built = self._build_report(records, header)  # the same records, with the test scores
            report_path = _write_report(self.tracker, built, records, options.report_dir, self.say)
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
        return SearchResult(status=status, parent_run_id=parent_id, experiment=cfg.name,
                            tracking_uri=self.tracking_uri, report=built, report_dir=report_path,
                            model_uri=self.model_uri, probe_score=self.probe_score)

    def _open_parent(self) -> str:
        from tune.reporting.records import flatten, search_tags
        from tune.tracker.provenance import PACKAGE_DIR, git_commit

        tracker = self.tracker
        if self.resume is not None:
            tracker.reopen_search(self.resume.run_id)
            # Runs the dead driver left open: the trials Tune saved reopen theirs when they go on; a trial started
            # after Tune's last snapshot is lost with the driver and stays KILLED (Tune samples a new one).
            tracker.kill_open_trials("the driver stopped before this trial ended")
            return self.resume.run_id
        commit = git_commit(PACKAGE_DIR.parent)
        space_file, tag = self._space_artifact()
        written = tag == "<python>"
        try:
            return tracker.start_search(
                run_name=f"search-{time.strftime('%Y%m%d-%H%M%S')}",
                params=flatten(self.checked.written.as_dict()),  # the config as written: names unresolved
                tags={"space_file": tag, "smoke_test": str(self.options.smoke_test),
                      "driver_hostname": socket.gethostname(), "driver_pid": str(os.getpid()),
                      **search_tags(self.searched, self.cfg.search.objective_list),
                      **({"mlflow.source.git.commit": commit} if commit else {})},
                artifacts=[space_file])
        finally:
            if written:  # a config given as a mapping, written out for the parent run: logged, so no longer needed
                shutil.rmtree(space_file.parent, ignore_errors=True)

    def _space_artifact(self) -> tuple[Path, str]:
        """The space file the parent run keeps, and its tag: the file itself, or a config given as a mapping
        written out as YAML (``<python>``)."""
        space = self.options.space_file
        if not isinstance(space, Mapping):
            path = space_file(space).resolve()
            return path, str(path)
        path = Path(tempfile.mkdtemp(prefix="freeze-search-")) / "space.yaml"
        try:
            text = yaml.safe_dump(dict(space), sort_keys=False)
        except yaml.YAMLError:  # values YAML cannot write (tuples, objects): the checked config instead
            text = yaml.safe_dump(self.checked.written.as_dict(), sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path, "<python>"

    def _fit_probe(self) -> dict[str, Any] | None:
        """The linear probe every trial's head starts from (``train.head_init: probe``, set or searched), fitted
        once here, in the driver, for every trial and node (its state travels with the trials); its validation score
        is the reference of the report (``probe_score`` on the parent run). None where no trial starts from it."""
        import torch

        from tune.training.train import fit_head_probe

        if self.cfg.train.head_init != "probe" and "head_init" not in self.cfg.space:
            return None
        started = time.perf_counter()
        # on the driver's CPU: a cluster's head node may have no GPU, and the driver holds no CUDA context for the
        # whole search (a Ray task with a trial's GPU would be faster for a large model on much data)
        fitted = fit_head_probe(self.task, self.cfg.train, torch.device("cpu"))
        if fitted is None:  # a task with its own trial, or no classifier: the head starts as the model builds it
            return None
        parent_id = self.tracker.parent_run_id
        self.probe_score = fitted.score
        self.tracker.log_metrics(parent_id, {"probe_score": fitted.score, "probe_l2": fitted.l2,
                                             "probe_fit_s": time.perf_counter() - started}, step=0)
        self.say(f"linear probe on the frozen features ({fitted.classifier}, L2 {fitted.l2:g} chosen on validation): "
                 f"{self.task.metric} {fitted.score:.4f}; every trial's head starts there")
        return fitted.state()

    def _confirm(self, records: list[TrialRecord]) -> tuple[dict[str, Any], list[TrialRecord]]:
        """Race the candidates on the same fresh seeds (``tune.reporting.race``): ``report.confirm_seeds`` each, then
        one more at a time for the undecided ones, up to ``report.confirm_max_seeds``. After a resume the (candidate,
        seed) runs that finished before the stop are not run again, and the rounds replay the same decisions. Returns
        their best-epoch checkpoints by trial, and the confirmation runs' records (fetched once a round, confirmation
        runs only) for the report; ``records`` are the search's."""
        from tune.driver import tuner
        from tune.reporting import race, report
        from tune.tracker import tracking

        cfg, options, parent_id, rule = self.cfg, self.options, self.tracker.parent_run_id, self.cfg.report
        candidates = report.candidates(records, rule, self.searched, rule.confirm_top)
        fetched: list[TrialRecord] = []
        if not candidates:  # nothing to confirm: no trial finished, or the scores cannot tell the trials apart
            return {}, fetched
        seeds = [cfg.train.seed + i for i in range(1, rule.seed_budget + 1)]
        done = tracking.finished_confirmations(self.tracking_uri, parent_id) if self.resume else set()
        checkpoints: dict[str, Any] = {}
        policies = {r.name: r.policy for r in report.summarise(records)}
        self.say(f"confirming {len(candidates)} candidates in a race on paired seeds: seeds "
                 f"{seeds[:rule.confirm_seeds]} first, then one a round up to {len(seeds)}, where the race decides "
                 "(it stops earlier where no candidate can be proven by then)"
                 + (f" ({len(done)} runs finished before the resume)" if done else ""))

        def run_round(plan: Mapping[str, Sequence[int]], number: int) -> list[race.Candidate]:
            if number > 1:
                named = (report.called(policies[name]) if name in policies else name for name in plan)
                self.say(f"round {number}: seed {', '.join(map(str, sorted({s for v in plan.values() for s in v})))} "
                         f"for {', '.join(named)}")
            outcome = tuner.confirm(cfg, self.tracker, {name: candidates[name] for name in plan},
                                     next(iter(plan.values())), storage_path=options.storage_path,
                                     address=self.address, verbose=int(options.verbose), done=done,
                                     head_probe=self.head_probe, round_number=number)
            self.tracker.kill_open_trials()
            if outcome is not None:
                checkpoints.update(outcome.best_checkpoints)
            fetched[:] = tracking.fetch_trials(self.tracking_uri, parent_id, phase="confirm",
                                               extra_keys=[m for m, _ in cfg.search.objective_list])
            return report.confirmation_candidates(report.summarise(fetched), rule.cost, self.searched)

        decision = race.race(list(candidates), seeds, rule.confirm_seeds, run_round, rule.tolerance, rule.confidence)
        if decision is not None:
            state = ("proven" if decision.decided else
                     f"nothing proven after {decision.seeds} of {decision.budget} seeds, the highest mean")
            self.say(f"confirmation {state}: {report.called(decision.chosen.policy)}")
        return checkpoints, fetched

    def _score_test(self, built: report.Report, records: list, checkpoints: Mapping[str, Any]) -> None:
        """Score the recommended configuration on the task's test split, once: its confirmation runs' best-epoch
        checkpoints (after a confirmation) or its trial's; on a cluster or with GPU trials in a Ray task with a
        trial's resources (scoring.score_test).
        ``test_score`` (the primary metric) and the task's other metrics as ``test_*`` go to each scored run, at its
        checkpoint's epoch, with where it was scored (tags ``test_hostname``, ``test_pid``), and into ``records``.
        Nothing is chosen on them."""
        from tune.driver import scoring

        names = list(built.confirmed_choice.runs) if built.confirmed_choice else [built.chosen.name]
        by_name = {r.name: r for r in records}
        run_ids = {r.name: r.run_id for r in records}
        wanted = {}
        for name in names:
            if name in checkpoints and name in run_ids:
                wanted[name] = checkpoints[name]
            else:
                warn(f"no checkpoint of trial {name}: not scored on the test split")
        metric = self.task.metric
        scored = scoring.score_test(self.cfg, self.task, wanted, address=self.address,
                                    verbose=int(self.options.verbose))
        for name, (metrics, epoch, where) in scored.items():
            renamed = {"test_score": metrics[metric],
                       **{f"test_{k.removeprefix('val_')}": v for k, v in metrics.items() if k != metric}}
            self.tracker.log_metrics(run_ids[name], renamed, step=epoch)
            by_name[name].history["test_score"] = [(epoch, renamed["test_score"])]  # the report's, without a fetch
            self.tracker.set_tags(run_ids[name], {"test_hostname": where["hostname"], "test_pid": where["pid"]})
            self.tracker.log_datasets(run_ids[name], ("test",))
        if scored:
            self.say(f"scored the recommendation on the test split ({len(scored)} checkpoint{'s' * (len(scored) > 1)})")

    def _log_summary(self, built: report.Report, outcome: Any) -> None:
        """The search in a few numbers on its parent run, so that searches compare in MLflow's runs table and
        charts: the best and the recommended score (with its interval after a confirmation), the test score, the
        recommendation's epoch time and memory, how the trials ended, and the compute: trial-epochs trained in the
        search and in the confirmation (epoch 0, a start scored before training, is none)."""
        from tune.reporting import report

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
        from tune.predict import PREPROCESS_FILE, dump_preprocess, model_metadata
        from tune.tracker import tracking
        from tune.tracker.provenance import PACKAGE_DIR
        from tune.training.trial import model_from_checkpoint

        block_model, _ = model_from_checkpoint(self.task, checkpoint)
        parent_id = self.tracker.parent_run_id
        example = block_model.example_input  # keyword tensors (a text model) give no input example
        with tempfile.TemporaryDirectory() as folder:  # the task's preprocessing, beside the model
            extra = []
            if self.task.preprocess is not None:
                try:
                    extra = [dump_preprocess(self.task.preprocess, Path(folder) / PREPROCESS_FILE)]
                except Exception as err:  # the pre-flight pickled it; what it holds may have changed since
                    warn(f"warning: the task's preprocess did not pickle ({one_line(err)}): the model is logged "
                         "without it")
            uri, model_id = self.tracker.log_model(parent_id, block_model.module,
                                                   None if isinstance(example, Mapping) else example.numpy(),
                                                   PACKAGE_DIR, metadata=model_metadata(self.task, bool(extra)),
                                                   extra_files=extra)
        self.tracker.set_tags(parent_id, {"recommended_model_uri": uri})
        self.model_uri = uri
        alias = tracking.SMOKE_ALIAS if self.options.smoke_test else tracking.RECOMMENDED_ALIAS
        try:
            registered, version = self.tracker.register_model(parent_id, uri, model_id, alias)
        except Exception as err:  # a registry that refuses (permissions, a store without one) fails no search
            warn(f"warning: the model registry did not take the recommended model ({one_line(err)}); "
                 f"it is logged all the same: {uri}")
            self.say(f"Recommended model (trial {chosen}, its best epoch): {uri}")
            return
        self.tracker.set_tags(parent_id, {"registered_model_uri": registered, "registered_model_version_uri": version})
        self.model_uri = version  # the alias moves with the next search; the version stays this search's
        self.say(f"Recommended model (trial {chosen}, its best epoch): {registered}  (this search's: {version})")


def _write_report(tracker: tracking.SearchTracker, built: report.Report, records: list[TrialRecord],
                  report_dir: Path, say: Say, tag: bool = True) -> Path:
    """Write the report (text, plots, summary) under ``report_dir`` and into the parent run, tag the parent with the
    recommendation (``tag``: the search's own rule, not a report's override of it), print it; returns the report's
    folder."""
    from tune.reporting import plots

    parent_id = tracker.parent_run_id
    name = tracker.experiment_name
    out_dir = report_dir / f"{name}-{parent_id[:8]}"
    files = plots.write_report(built, [r for r in records if "candidate" not in r.tags], out_dir, name)
    tracker.log_files(parent_id, files, "report")
    chosen = built.chosen  # after --confirm, the confirmed one
    if chosen is not None and tag:
        tags = {"recommended_trial": chosen.name, "recommended_freeze_range": chosen.freeze_range,
                "recommended_policy": chosen.label, "best_score": f"{built.recommendation.best.score:.4f}"}
        if built.decision is not None:  # the race's verdict: proven (its promise holds) or not, and how it ended
            tags.update(recommendation_proven=str(built.decision.decided).lower(),
                        race_ended=built.decision.ended or "stopped")
        tracker.set_tags(parent_id, tags)
    say("\n" + built.text)
    say(f"\nReport, plots and summary: {out_dir}/ (also artifacts of the parent run, under report/)")
    return out_dir


# the parent's tags that name its recommended model, the most lasting first
MODEL_TAGS = ("registered_model_version_uri", "registered_model_uri", "recommended_model_uri")


def rebuild_report(uri: str | None, *, experiment: str, run_id: str | None = None, tolerance: float | None = None,
                   cost: str | None = None, report_dir: Path = StudyOptions.report_dir, say: Say = say
                   ) -> SearchResult:
    """A logged search's result again, from MLflow alone (``freeze-search report``), its report written again
    under ``report_dir``; ``tolerance`` and ``cost`` override the rule the search was run with."""
    from tune.reporting import report
    from tune.tracker import store, tracking

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
    records = tracking.fetch_trials(uri, record.run_id, extra_keys=[m for m, _ in record.objectives])
    built = report.build_report(records, searched=record.searched, objectives=record.objectives,
                                tolerance=logged.tolerance if tolerance is None else tolerance,
                                cost=cost or logged.cost,
                                confidence=logged.confidence, budget=logged.seed_budget,
                                reference=tracker.search_metrics().get("probe_score"), val_size=record.val_size)
    overridden = tolerance is not None or cost is not None  # the parent's tags keep the search's own answer
    if built.decision is not None and tolerance is not None and tolerance != logged.tolerance:
        built.text += (f"\n\nThe tolerance {tolerance:g} was chosen after the race ran (it ran for "
                       f"{logged.tolerance:g}): a tolerance picked on seen scores is no part of the race's promise, "
                       "so read 'proven' above as this rebuild's reading of the same runs.")
    out_dir = _write_report(tracker, built, records, report_dir, say, tag=not overridden)
    return SearchResult(status=record.status, parent_run_id=record.run_id, experiment=record.name or experiment,
                        tracking_uri=uri, report=built, report_dir=out_dir,
                        model_uri=next((record.tags[tag] for tag in MODEL_TAGS if tag in record.tags), None),
                        probe_score=built.reference)
