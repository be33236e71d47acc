"""Ray Tune: the search itself (the Ray runtime under it: tune.driver.cluster).

One Tuner per search: OptunaSearch (TPE) samples the space (define-by-run, see tune.settings.space), ASHA stops
weak trials early on ``score`` (or FIFO runs them all), each trial reports every epoch with a checkpoint
and resumes from it, and a Tune callback in the driver hands every trial event to MLflow
(tune.tracker.trial_runs.TrialRuns). ``run`` reads: the trainable (``_trainable``: a trial built by
``tune.training.train.make_trial`` in a Ray worker), its resources (``_wrap``; freeze-aware GPU shares are
``tune.driver.resources``'), the Tuner fitted (``_fit``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import ray
import torch
from ray import tune as ray_tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.schedulers.async_hyperband import _Bracket  # ASHA's rung bookkeeping: one per freeze range
from ray.tune.search.optuna import OptunaSearch

from tune.driver import cluster, resources
from tune.driver.events import BadInput, TrialEvents, quiet_config_errors, stop_for_bad_input
from tune.settings.config import Config, TaskConfig, TrainConfig
from tune.settings.space import FREEZE_KEYS, OptunaSpace
from tune.tasks import load_task
from tune.tracker.system_metrics import SystemSampler
from tune.tracker.tracking import SearchTracker
from tune.tracker.trial_runs import TrialRuns
from tune.training import prefix_cache
from tune.training.probe import Probe
from tune.training.space_freezes import grid_values
from tune.training.train import make_trial
from tune.training.trial import load_checkpoint, save_checkpoint

__all__ = ["TunerOutcome", "can_restore", "concurrency", "confirm", "grid_size", "run"]


@dataclass(frozen=True)
class TunerOutcome:
    trials: int  # trials that started
    errored: int
    wall_time_s: float
    budget_reached: bool  # the search stopped at search.time_budget_s
    best_checkpoints: dict[str, Any]  # trial id → its best-score ray.tune.Checkpoint (local or on s3://...)


# -- one trial in a Ray worker ----------------------------------------------------------------------------------
def _in_worker(cfg: TrainConfig, workdir: str | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """A Ray worker's train config and placement: torch's threads = the CPUs Ray gave it; device auto without a
    GPU from Ray is the CPU (Ray does not hide GPUs from a worker that asked for none: keep it off the GPUs
    others were given). The worker works in ``workdir``, the driver's working directory, where this node has it:
    a relative path in a user's task code means the same file in a trial as in the driver. Elsewhere (another
    node) it stays where Ray started it: a Ray Job's copy of its working directory, since RAY_CHDIR_TO_TRIAL_DIR
    is 0 (``_fit``)."""
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)
    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    placement = {"trial_cpus": assigned.get("CPU", 0.0), "trial_gpus": assigned.get("GPU", 0.0),
                 "node_id": ray.get_runtime_context().get_node_id()}
    if cfg.device == "auto" and not assigned.get("GPU"):
        cfg = dataclasses.replace(cfg, device="cpu")
    return cfg, placement


def _trainable(params: dict[str, Any], base: TrainConfig, task_config: TaskConfig,
               cache_dir: str | None = None, head_probe: dict[str, Any] | None = None, workdir: str | None = None
               ) -> None:
    """One trial inside a Ray worker: build it, resume from the last checkpoint if any, report each epoch."""
    cfg, placement = _in_worker(dataclasses.replace(base, **params), workdir)
    task = load_task(task_config)
    trial = make_trial(task, cfg, shared_cache=prefix_cache.SharedPrefixCache(cache_dir) if cache_dir else None,
                       head_probe=Probe.from_state(head_probe) if head_probe else None)
    checkpoint = ray_tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trial.load_state_dict(load_checkpoint(directory, trial.device))

    system = SystemSampler(gpu=trial.device.type == "cuda").start()

    def report(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(trial, directory)
            ray_tune.report({**metrics, **system.epoch(), **placement},
                            checkpoint=ray_tune.Checkpoint.from_directory(directory))

    try:
        trial.run(report)
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        # the trial fails with its reason; the search goes on with the others
        raise RuntimeError(f"out of memory at epoch {trial.epoch + 1}: {type(err).__name__}: {err}") from None
    finally:
        system.stop()


def _variant_trainable(config: dict[str, Any], base: TrainConfig, task_config: TaskConfig,
                       cache_dir: str | None = None, head_probe: dict[str, Any] | None = None,
                       workdir: str | None = None) -> None:
    """A confirmation run: ``config["variant"]`` holds the candidate's name and its exact params."""
    _trainable(config["variant"]["params"], base, task_config, cache_dir, head_probe, workdir)


# -- the Tuner ------------------------------------------------------------------------------------------------
def _scheduler(cfg: Config) -> Any:
    if cfg.search.scheduler_name == "fifo":
        return FIFOScheduler()
    scheduler = _RangeASHA if cfg.search.asha_rungs == "per_freeze_range" else ASHAScheduler
    # rungs by epoch, not by report: a head started from the probe reports its start as epoch 0 first
    return scheduler(time_attr="epoch", max_t=cfg.train.epochs,
                     grace_period=cfg.search.grace_period, reduction_factor=cfg.search.reduction_factor)


class _RangeASHA(ASHAScheduler):
    """ASHA whose rungs are kept per freeze range (and thaw, tune.training.policy): a trial is stopped only for scoring
    below the trials of its own freeze range at the same epoch. Learning curves of different depths cross (from a
    probe-initialised head, a deeper fine-tune dips in its first epochs, then climbs past the frozen one; a thaw
    dips too), so one shared rung would stop whole depths in their dip; per range, ASHA does what it is for here,
    dropping the weak nuisance values (lr) within each depth. A range with a single trial is never stopped."""

    def __init__(self, *, grace_period: int, **options: Any) -> None:
        super().__init__(grace_period=grace_period, **options)
        self._grace = grace_period
        self._by_range: dict[tuple[str, ...], Any] = {}

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)  # checks the metric and mode
        # the search's trials (confirm: FIFO) by freeze range and thaw: a thaw's learning curve dips at the thaw
        key = tuple(repr(trial.config.get(name)) for name in (*FREEZE_KEYS, "unfreeze_epoch", "unfreeze_every"))
        if key not in self._by_range:  # one bracket per range, as ASHA's own single bracket (s = 0)
            self._by_range[key] = _Bracket(self._grace, self._max_t, self._reduction_factor, 0,
                                           stop_last_trials=self._stop_last_trials)
        self._trial_info[trial.trial_id] = self._by_range[key]


def concurrency(cfg: Config, smallest_gpu_share: float | None = None) -> int:
    """Trials at a time: the config's, or as many as the cluster's CPUs and GPUs hold (with freeze-aware GPU
    shares, counted at the smallest share; Ray places each trial on what it actually asks for)."""
    if cfg.search.max_concurrent_trials:
        return cfg.search.max_concurrent_trials
    available = ray.cluster_resources()
    by_cpu = int(available.get("CPU", 1) // cfg.search.cpus_per_trial)
    gpu_share = smallest_gpu_share or cfg.search.gpus_per_trial
    by_gpu = int(available.get("GPU", 0) // gpu_share) if gpu_share else by_cpu
    if cfg.search.algorithm == "grid":
        return max(1, min(by_cpu, by_gpu))
    return max(1, min(by_cpu, by_gpu, cfg.search.num_samples))


def grid_size(space: Mapping[str, Any]) -> int:
    """How many combinations a grid search over ``space`` (names resolved) runs."""
    size = 1
    for dim in space.values():
        size *= len(grid_values(dim))
    return size


def _fit(cfg: Config, tracker: SearchTracker, trainable: Any, *, name: str, storage_path: str,
         tune_config: dict[str, Any], param_space: dict[str, Any] | None, verbose: int, total: int,
         restore_from: str | None = None, head_probe: dict[str, Any] | None = None) -> TunerOutcome:
    per_trial = resources.FreezeAwareResources(cfg) if cfg.search.freeze_aware_gpus else None
    at_once = concurrency(cfg, min(per_trial.shares.values()) if per_trial else None)
    # With a searcher, Tune places one trial at a time unless more placement groups may be pending
    # (field-notes: 8 small trials 38 s → 9 s). Read when the Tuner starts.
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(at_once)
    # A checkpoint every epoch with num_to_keep=1 forces an experiment snapshot each time (that is what
    # makes a killed search resumable); Tune warns about it every few seconds, which is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C reaches the CLI as KeyboardInterrupt (open runs KILLED, parent KILLED, resumable with --resume)
    # instead of Tune's own handler, which would return as if the search had finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Trials work in the driver's working directory (``_in_worker``), not in Tune's per-trial folder: Tune passes
    # this variable on to its trial actors. A user who set it keeps their choice.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Tune's own console output (its experiment table, the TensorBoard hint, a progress table) says nothing the
    # search's own lines do not; the old reporter at verbose 0 is silent, the new one is not. --verbose shows it.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    wrapped = _wrap(cfg, trainable, prefix_cache.directory(storage_path), per_trial, head_probe)
    runs = TrialRuns(tracker, dataclasses.asdict(cfg.train), cfg.train.epochs, searched=list(cfg.space))
    quiet_config_errors()
    if restore_from is not None:  # Tune restores its callbacks and stopper (a BadInput) with the experiment
        tuner = ray_tune.Tuner.restore(restore_from, trainable=wrapped, resume_unfinished=True, resume_errored=False)
        outcome = _outcome(tuner, tune_config.get("time_budget_s"))
        for restored in list(BadInput._live.values()):
            stop_for_bad_input(restored, restored.runs or runs)
        return outcome
    bad_input = BadInput(total)
    tuner = ray_tune.Tuner(
        wrapped,
        param_space=param_space,
        tune_config=ray_tune.TuneConfig(max_concurrent_trials=at_once, reuse_actors=True, **tune_config),
        run_config=ray_tune.RunConfig(
            name=name, storage_path=cluster.storage_uri(storage_path),
            verbose=verbose, callbacks=[TrialEvents(runs, list(cfg.space), total, bad_input)], stop=bad_input,
            # keep the best-score checkpoint (for the logged model) and the latest (to resume)
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score",
                                                        checkpoint_score_order="max"),
            failure_config=ray_tune.FailureConfig(max_failures=1)),
    )
    outcome = _outcome(tuner, tune_config.get("time_budget_s"))
    stop_for_bad_input(bad_input, runs)
    return outcome


def _wrap(cfg: Config, trainable: Any, cache_dir: str | None, per_trial: resources.FreezeAwareResources | None,
          head_probe: dict[str, Any] | None) -> Any:
    # the fitted probe goes through Ray's object store: every node's trials start their heads from the same one
    wrapped = ray_tune.with_parameters(trainable, base=cfg.train, task_config=cfg.task, cache_dir=cache_dir,
                                       head_probe=head_probe, workdir=os.getcwd())
    if per_trial is None:
        return ray_tune.with_resources(wrapped, {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial})
    return ray_tune.with_resources(wrapped, per_trial)


def _outcome(tuner: Any, budget: float | None) -> TunerOutcome:
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    return TunerOutcome(trials=len(results), errored=results.num_errors, wall_time_s=wall,
                         budget_reached=budget is not None and wall >= budget,
                         best_checkpoints=_best_checkpoints(results))


def _experiment_name(cfg: Config) -> str:
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def can_restore(experiment_path: str) -> bool:
    return bool(experiment_path) and ray_tune.Tuner.can_restore(experiment_path)


def run(cfg: Config, tracker: SearchTracker, *, storage_path: str, address: str | None = None, verbose: int = 0,
        restore_from: str | None = None, head_probe: dict[str, Any] | None = None) -> TunerOutcome:
    """Run the search of ``cfg`` (checked against its task, names resolved: tune.driver.study), or go on with the
    interrupted one saved at ``restore_from`` (its trials keep their MLflow runs)."""
    cluster.init_ray(address, verbose)
    name = _experiment_name(cfg)
    if restore_from is None:
        tracker.set_tags(tracker.parent_run_id, {"ray.experiment_path": f"{cluster.storage_uri(storage_path)}/{name}"})
    objectives = cfg.search.objective_list
    metrics, modes = [m for m, _ in objectives], [m for _, m in objectives]
    single = len(objectives) == 1
    tune_config = {"metric": metrics[0] if single else None, "mode": modes[0] if single else None,
                   "scheduler": _scheduler(cfg), "num_samples": cfg.search.num_samples,
                   "time_budget_s": cfg.search.time_budget_s}
    param_space = None
    if cfg.search.algorithm == "grid":  # every combination, once per num_samples (Tune's grid_search)
        param_space = {key: ray_tune.grid_search(grid_values(dim)) for key, dim in cfg.space.items()}
    else:
        optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)  # "study created"
        # Several objectives go to Optuna as lists; Tune itself takes one metric or none (field-notes).
        tune_config["search_alg"] = OptunaSearch(space=OptunaSpace(cfg.space), metric=metrics[0] if single else metrics,
                                                 mode=modes[0] if single else modes, seed=cfg.search.seed,
                                                 points_to_evaluate=[dict(p) for p in cfg.search.points_to_evaluate]
                                                 or None)
    total = grid_size(cfg.space) * cfg.search.num_samples if param_space else cfg.search.num_samples
    return _fit(cfg, tracker, _trainable, name=name, storage_path=storage_path, tune_config=tune_config,
                param_space=param_space, verbose=verbose, total=total, restore_from=restore_from,
                head_probe=head_probe)


def confirm(cfg: Config, tracker: SearchTracker, candidates: Mapping[str, dict[str, Any]], seeds: list[int], *,
            storage_path: str, address: str | None = None, verbose: int = 0,
            done: Collection[tuple[str, int]] = (), head_probe: dict[str, Any] | None = None,
            round_number: int = 1) -> TunerOutcome | None:
    """Re-run each candidate's exact params with each of ``seeds``, every epoch, no early stopping, as round
    ``round_number`` of the confirmation (the runs' tag ``round``); the (candidate, seed) pairs in ``done``
    (finished before a resume) are not run again. None when nothing is left."""
    variants = [{"candidate": name, "round": round_number, "params": {**params, "seed": seed}}
                for name, params in candidates.items() for seed in seeds if (name, seed) not in done]
    if not variants:
        return None
    cluster.init_ray(address, verbose)
    return _fit(cfg, tracker, _variant_trainable, name=f"{_experiment_name(cfg)}-confirm-{round_number}",
                storage_path=storage_path,
                tune_config={"scheduler": FIFOScheduler()}, param_space={"variant": ray_tune.grid_search(variants)},
                verbose=verbose, total=len(variants), head_probe=head_probe)


def _best_checkpoints(results: Any) -> dict[str, Any]:
    """Each trial's best-score checkpoint; ``checkpoint.as_directory()`` gives a local folder wherever it is."""
    best = {}
    for result in results:
        scored = [(metrics.get("score", float("-inf")), checkpoint) for checkpoint, metrics in result.best_checkpoints]
        if scored and "trial_id" in result.metrics:
            best[result.metrics["trial_id"]] = max(scored, key=lambda pair: pair[0])[1]
    return best
