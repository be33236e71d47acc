"""Ray Tune: the search itself. The only module that imports Ray.

One Tuner per search: OptunaSearch (TPE) samples the space (define-by-run, see tune.space), ASHA stops
weak trials early on ``score`` (or FIFO runs them all), each trial reports every epoch with a checkpoint
and resumes from it, and a Tune callback in the driver logs every trial to MLflow (tune.tracking).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune as ray_tune
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from tune.config import Config, TaskConfig, TrainConfig
from tune.freeze import check_space, grid_values, sampled_freezes, trial_freeze
from tune.space import optuna_space
from tune.tasks import load_task
from tune.tracking import SearchTracker
from tune.train import SharedPrefixCache, gpu_shares, load_checkpoint, make_trial, save_checkpoint

__all__ = ["SearchOutcome", "can_restore", "confirm", "experiment_name", "follow_job", "grid_size", "init_ray",
           "largest_node_gpus", "run", "storage_uri", "submit_job"]

@dataclass(frozen=True)
class SearchOutcome:
    experiment_path: str
    trials: int  # trials that started
    errored: int
    wall_time_s: float
    budget_reached: bool  # the search stopped at search.time_budget_s
    best_checkpoints: dict[str, Any]  # trial id → its best-score ray.tune.Checkpoint (local or on s3://...)


def _trainable(params: dict[str, Any], base: TrainConfig, task_config: TaskConfig,
               cache_dir: str | None = None) -> None:
    """One trial inside a Ray worker: build it, resume from the last checkpoint if any, report each epoch."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    placement = {"trial_cpus": assigned.get("CPU", 0.0), "trial_gpus": assigned.get("GPU", 0.0),
                 "node_id": ray.get_runtime_context().get_node_id()}
    task = load_task(task_config)
    cfg = dataclasses.replace(base, **params)
    if cfg.device == "auto" and not assigned.get("GPU"):
        # Ray does not hide GPUs from a trial that asked for none: keep it off the GPUs others were given
        cfg = dataclasses.replace(cfg, device="cpu")
    trial = make_trial(task, cfg, shared_cache=SharedPrefixCache(cache_dir) if cache_dir else None)
    checkpoint = ray_tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trial.load_state_dict(load_checkpoint(directory, trial.device))

    def report(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(trial, directory)
            ray_tune.report({**metrics, **placement}, checkpoint=ray_tune.Checkpoint.from_directory(directory))

    try:
        trial.run(report)
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        # the trial fails with its reason; the search goes on with the others
        raise RuntimeError(f"out of memory at epoch {trial.epoch + 1}: {type(err).__name__}: {err}") from None


# Result keys that describe where and how a trial ran: tags of its MLflow run, not metrics.
_TAG_KEYS = ("mem_source", "prefix_cache", "node_ip", "node_id", "hostname", "pid", "trial_cpus", "trial_gpus",
             "diverged")


def _variant_trainable(config: dict[str, Any], base: TrainConfig, task_config: TaskConfig,
                       cache_dir: str | None = None) -> None:
    """A confirmation run: ``config["variant"]`` holds the candidate's name and its exact params."""
    _trainable(config["variant"]["params"], base, task_config, cache_dir)


def _trial_params(trial: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A trial's training params and the tags that say which phase it belongs to."""
    variant = trial.config.get("variant")
    if variant is None:
        return dict(trial.config), {"phase": "search"}
    return dict(variant["params"]), {"phase": "confirm", "candidate": variant["candidate"]}


class _MlflowTrials(ray_tune.Callback):
    """Runs in the driver: one MLflow child run per Tune trial, metrics per epoch (step = epoch), and a line
    on the console as each trial ends."""

    def __init__(self, tracker: SearchTracker, base: TrainConfig, searched: list[str]) -> None:
        self.tracker = tracker
        self.searched = searched
        self.last_score: dict[str, float] = {}
        self.diverged: set[str] = set()
        self.closed: set[str] = set()  # trials whose MLflow run had already ended when a search was restored
        self.base = dataclasses.asdict(base)
        self.epochs = base.epochs
        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self.run_ids:
            found = self.tracker.find_trial(trial.trial_id)  # a restored search: go on with the trial's run
            if found is not None:
                run_id, last_epoch, finished = found
                self.run_ids[trial.trial_id] = run_id
                if last_epoch:
                    self.last_epoch[trial.trial_id] = last_epoch
                if finished:  # it ended before the driver died, after Tune's last snapshot: leave its run be
                    self.closed.add(trial.trial_id)
                return run_id
            params, tags = _trial_params(trial)
            self.run_ids[trial.trial_id] = self.tracker.start_trial(
                trial.trial_id, {**self.base, **params}, tags={"ray.trial_id": trial.trial_id, **tags})
        return self.run_ids[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._run_id(trial)
        epoch = int(result["epoch"])
        if result.get("iterations_since_restore") == 1 and epoch > 1:
            # restored from the epoch-1 checkpoint. Tune registers a reported checkpoint only after this callback
            # (a save call to the worker), so a worker killed in between restarts one checkpoint earlier and
            # replays an epoch MLflow already holds: the tag says where it went on either way.
            self.tracker.set_tags(run_id, {"resumed_at_epoch": epoch})
        if epoch <= self.last_epoch.get(trial.trial_id, 0):
            return  # a retried trial replays no epoch it already logged
        if trial.trial_id not in self.last_epoch:  # the first result carries the FreezeSummary
            self.tracker.log_params(run_id, {
                "freeze_range": result.get("freeze_label", f"[{result['freeze_start']}, {result['freeze_stop']})"),
                "trainable_params": result["trainable_params"], "frozen_params": result["frozen_params"],
                "frozen_flops_share": f"{result['frozen_flops_share']:.4f}"})
            self.tracker.set_tags(run_id, {k: result[k] for k in _TAG_KEYS if k in result})
        if result.get("diverged"):
            self.diverged.add(trial.trial_id)
            self.tracker.set_tags(run_id, {"diverged": "true", "diverged_at_epoch": epoch})
        self.last_epoch[trial.trial_id] = epoch
        self.last_score[trial.trial_id] = result["score"]
        metrics = {k: v for k, v in result.items() if k not in AUTO_RESULT_KEYS and k not in _TAG_KEYS
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.tracker.log_metrics(run_id, metrics, step=epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.closed:
            return
        epochs_run = self.last_epoch.get(trial.trial_id, 0)
        if trial.trial_id in self.diverged:
            self.tracker.end_trial(self._run_id(trial), "FINISHED", tags={"epochs_run": epochs_run})
            self._say(trial, f"diverged (loss not finite) at epoch {epochs_run}")
            return
        stopped_early = epochs_run < _trial_params(trial)[0].get("epochs", self.epochs)  # epochs may be searched
        self.tracker.end_trial(self._run_id(trial), "FINISHED",
                               tags={"epochs_run": epochs_run, "stopped_early": stopped_early})
        self._say(trial, f"score {self.last_score.get(trial.trial_id, float('nan')):.4f} after {epochs_run} epochs"
                         + (" (stopped early by ASHA)" if stopped_early else ""))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.closed:
            return
        error_file = getattr(trial, "error_file", None) or ""
        reason = _failure_reason(error_file)
        self.tracker.end_trial(self._run_id(trial), "FAILED", tags={"error_file": error_file,
                                                                    "failure_reason": reason})
        self._say(trial, f"FAILED: {reason}")

    def _say(self, trial: Any, outcome: str) -> None:
        params, tags = _trial_params(trial)
        values = ", ".join(f"{k}={_short(params.get(k))}" for k in [*self.searched, *(["seed"] if "candidate" in tags
                                                                                       else [])])
        print(f"  trial {trial.trial_id} ({values}): {outcome}", flush=True)


def _failure_reason(error_file: str) -> str:
    """The last line of the trial's traceback that names an exception, e.g. 'RuntimeError: out of memory ...'."""
    try:
        lines = [line.strip() for line in Path(error_file).read_text().splitlines() if line.strip()]
    except OSError:
        return "unknown (no error file)"
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return (named[-1] if named else lines[-1] if lines else "unknown")[:500]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _scheduler(cfg: Config) -> Any:
    if cfg.search.scheduler_name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                         grace_period=cfg.search.grace_period, reduction_factor=cfg.search.reduction_factor)


def _concurrency(cfg: Config, smallest_gpu_share: float | None = None) -> int:
    """Trials at a time: the config's, or as many as the cluster's CPUs and GPUs hold (with freeze-aware GPU
    shares, counted at the smallest share; Ray places each trial on what it actually asks for)."""
    if cfg.search.max_concurrent_trials:
        return cfg.search.max_concurrent_trials
    resources = ray.cluster_resources()
    by_cpu = int(resources.get("CPU", 1) // cfg.search.cpus_per_trial)
    gpu_share = smallest_gpu_share or cfg.search.gpus_per_trial
    by_gpu = int(resources.get("GPU", 0) // gpu_share) if gpu_share else by_cpu
    if cfg.search.algorithm == "grid":
        return max(1, min(by_cpu, by_gpu))
    return max(1, min(by_cpu, by_gpu, cfg.search.num_samples))


def grid_size(space: Mapping[str, Any]) -> int:
    """How many combinations a grid search over ``space`` (names resolved) runs."""
    size = 1
    for dim in space.values():
        size *= len(grid_values(dim))
    return size


def largest_node_gpus() -> float:
    """GPUs of the largest live node: of the Ray runtime this process is connected to, else of this machine
    (what a local Ray would find)."""
    if ray.is_initialized():
        return max((node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["Alive"]), default=0.0)
    return float(torch.cuda.device_count())


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` or $RAY_ADDRESS (an existing cluster; a Ray Job sets it) or start a local Ray
    without its dashboard (about 1 GB less), unless Ray is already up."""
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        options["include_dashboard"] = False
    ray.init(address=address, **options)


# What a Ray Job's working directory leaves out (gitignore patterns): environments, stores, results.
JOB_EXCLUDES = [".venv/", ".venv-yolo/", "venv/", ".git/", "*.egg-info/", "mlflow.db", "mlartifacts/", "mlruns/",
                "ray_results/", "reports/", "__pycache__/", ".pytest_cache/", ".ruff_cache/"]


def submit_job(address: str, project_dir: Path, arguments: list[str], python: str = "python") -> str:
    """Submit ``python run_search.py <arguments>`` as a Ray Job with the project as its working directory;
    returns the job id."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    entrypoint = " ".join(shlex.quote(part) for part in [python, "run_search.py", *arguments])
    return client.submit_job(entrypoint=entrypoint,
                             runtime_env={"working_dir": str(project_dir), "excludes": JOB_EXCLUDES})


def follow_job(address: str, job_id: str) -> str:
    """Print the job's logs as they come; returns its final status (SUCCEEDED, FAILED, STOPPED)."""
    import asyncio

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return str(client.get_job_status(job_id))


def storage_uri(storage_path: str) -> str:
    """An absolute local path (Ray needs one), or a URI such as s3://bucket/path as given."""
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def _fit(cfg: Config, tracker: SearchTracker, trainable: Any, *, name: str, storage_path: str,
         tune_config: dict[str, Any], param_space: dict[str, Any] | None, verbose: int,
         restore_from: str | None = None) -> SearchOutcome:
    per_trial = _FreezeAwareResources(cfg) if cfg.search.freeze_aware_gpus else None
    concurrency = _concurrency(cfg, min(per_trial.shares.values()) if per_trial else None)
    # With a searcher, Tune places one trial at a time unless more placement groups may be pending
    # (field-notes: 8 small trials 38 s → 9 s). Read when the Tuner starts.
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrency)
    # A checkpoint every epoch with num_to_keep=1 forces an experiment snapshot each time (that is what
    # makes a killed search resumable); Tune warns about it every few seconds, which is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl-C reaches the CLI as KeyboardInterrupt (open runs KILLED, parent KILLED, resumable with --resume)
    # instead of Tune's own handler, which would return as if the search had finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    wrapped = _wrap(cfg, trainable, prefix_cache_dir(storage_path), per_trial)
    if restore_from is not None:
        tuner = ray_tune.Tuner.restore(restore_from, trainable=wrapped, resume_unfinished=True, resume_errored=False)
        return _outcome(tuner, tune_config.get("time_budget_s"))
    tuner = ray_tune.Tuner(
        wrapped,
        param_space=param_space,
        tune_config=ray_tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True, **tune_config),
        run_config=ray_tune.RunConfig(
            name=name, storage_path=storage_uri(storage_path),
            verbose=verbose, callbacks=[_MlflowTrials(tracker, cfg.train, list(cfg.space))],
            # keep the best-score checkpoint (for the logged model) and the latest (to resume)
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score",
                                                        checkpoint_score_order="max"),
            failure_config=ray_tune.FailureConfig(max_failures=1)),
    )
    return _outcome(tuner, tune_config.get("time_budget_s"))


def prefix_cache_dir(storage_path: str) -> str | None:
    """Where the trials of every search under ``storage_path`` share frozen-prefix outputs (keys are content
    hashes, so searches, confirmations and resumed searches share safely); None for a remote URI, where each
    trial computes its own. The folder can be deleted at any time."""
    uri = storage_uri(storage_path)
    return None if "://" in uri else str(Path(uri) / "prefix_cache")


def _wrap(cfg: Config, trainable: Any, cache_dir: str | None, per_trial: _FreezeAwareResources | None) -> Any:
    wrapped = ray_tune.with_parameters(trainable, base=cfg.train, task_config=cfg.task, cache_dir=cache_dir)
    if per_trial is None:
        return ray_tune.with_resources(wrapped, {"cpu": cfg.search.cpus_per_trial, "gpu": cfg.search.gpus_per_trial})
    return ray_tune.with_resources(wrapped, per_trial)


class _FreezeAwareResources:
    """Per-trial resources from the trial's config: a deeper freeze needs less memory, so it asks for a smaller
    share of a GPU and more trials share one (search.freeze_aware_gpus)."""

    def __init__(self, cfg: Config) -> None:
        self.cpus, self.full, self.train = cfg.search.cpus_per_trial, cfg.search.gpus_per_trial, cfg.train
        task = load_task(cfg.task)
        self.block_model = task.build_model()
        # every freeze the space can sample: one epoch each, measured once in the driver before the search
        freezes = sampled_freezes(check_space(cfg.space, cfg.train, self.block_model), cfg.train, self.block_model)
        self.shares = gpu_shares(task, cfg.train, freezes, self.full)

    def __call__(self, config: dict[str, Any]) -> Any:
        params = config.get("variant", {}).get("params", config)
        share = self.shares.get(trial_freeze(params, self.train, self.block_model), self.full)
        return PlacementGroupFactory([{"CPU": self.cpus, "GPU": share}])


def _outcome(tuner: Any, budget: float | None) -> SearchOutcome:
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    return SearchOutcome(experiment_path=results.experiment_path, trials=len(results), errored=results.num_errors,
                         wall_time_s=wall, budget_reached=budget is not None and wall >= budget,
                         best_checkpoints=_best_checkpoints(results))


def experiment_name(cfg: Config) -> str:
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def can_restore(experiment_path: str) -> bool:
    return ray_tune.Tuner.can_restore(experiment_path)


def run(cfg: Config, tracker: SearchTracker, *, storage_path: str, space: Mapping[str, Any] | None = None,
        address: str | None = None, verbose: int = 0, restore_from: str | None = None) -> SearchOutcome:
    """Run the search of ``cfg`` (its space already checked against the task: ``freeze.check_space``), or go
    on with the interrupted one saved at ``restore_from`` (its trials keep their MLflow runs)."""
    init_ray(address)
    name = experiment_name(cfg)
    if restore_from is None:
        tracker.set_tags(tracker.parent_run_id, {"ray.experiment_path": f"{storage_uri(storage_path)}/{name}"})
    objectives = cfg.search.objective_list
    metrics, modes = [m for m, _ in objectives], [m for _, m in objectives]
    single = len(objectives) == 1
    space = space if space is not None else cfg.space
    tune_config = {"metric": metrics[0] if single else None, "mode": modes[0] if single else None,
                   "scheduler": _scheduler(cfg), "num_samples": cfg.search.num_samples,
                   "time_budget_s": cfg.search.time_budget_s}
    param_space = None
    if cfg.search.algorithm == "grid":  # every combination, once per num_samples (Tune's grid_search)
        param_space = {key: ray_tune.grid_search(grid_values(dim)) for key, dim in space.items()}
    else:
        # Several objectives go to Optuna as lists; Tune itself takes one metric or none (field-notes).
        tune_config["search_alg"] = OptunaSearch(space=optuna_space(space), metric=metrics[0] if single else metrics,
                                                 mode=modes[0] if single else modes, seed=cfg.search.seed)
    return _fit(cfg, tracker, _trainable, name=name, storage_path=storage_path, tune_config=tune_config,
                param_space=param_space, verbose=verbose, restore_from=restore_from)


def confirm(cfg: Config, tracker: SearchTracker, candidates: Mapping[str, dict[str, Any]], seeds: list[int], *,
            storage_path: str, address: str | None = None, verbose: int = 0,
            done: Collection[tuple[str, int]] = ()) -> SearchOutcome | None:
    """Re-run each candidate's exact params with each of ``seeds``, every epoch, no early stopping; the
    (candidate, seed) pairs in ``done`` (finished before a resume) are not run again. None when nothing is left."""
    variants = [{"candidate": name, "params": {**params, "seed": seed}}
                for name, params in candidates.items() for seed in seeds if (name, seed) not in done]
    if not variants:
        return None
    init_ray(address)
    return _fit(cfg, tracker, _variant_trainable, name=f"{experiment_name(cfg)}-confirm", storage_path=storage_path,
                tune_config={"scheduler": FIFOScheduler()}, param_space={"variant": ray_tune.grid_search(variants)},
                verbose=verbose)


def _best_checkpoints(results: Any) -> dict[str, Any]:
    """Each trial's best-score checkpoint; ``checkpoint.as_directory()`` gives a local folder wherever it is."""
    best = {}
    for result in results:
        scored = [(metrics.get("score", float("-inf")), checkpoint) for checkpoint, metrics in result.best_checkpoints]
        if scored and "trial_id" in result.metrics:
            best[result.metrics["trial_id"]] = max(scored, key=lambda pair: pair[0])[1]
    return best

