"""What the driver hears from Ray Tune about each trial: its events handed to MLflow (tune.tracker.trial_runs.TrialRuns)
and a console line as it ends (``TrialEvents``), and the stop for bad input the first trials all met (``BadInput``).
"""

from __future__ import annotations

import logging
import uuid
import weakref
from typing import Any, ClassVar

from ray import cloudpickle
from ray import tune as ray_tune
from ray.tune.result import AUTO_RESULT_KEYS

from tune.errors import ConfigError, TrialConfigError, one_line
from tune.log import say
from tune.reporting.records import short
from tune.tracker.trial_runs import TAG_KEYS, TrialRuns

__all__ = ["BadInput", "TrialEvents", "quiet_config_errors", "stop_for_bad_input", "trial_params"]


def trial_params(trial: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A trial's training params and the tags that say which phase it belongs to."""
    variant = trial.config.get("variant")
    if variant is None:
        return dict(trial.config), {"phase": "search"}
    return dict(variant["params"]), {"phase": "confirm", "candidate": variant["candidate"],
                                     "round": str(variant.get("round", 1))}


class BadInput(ray_tune.Stopper):
    """A failure every trial will meet: when the first trials to fail or report all failed alike (the same
    ConfigError, such as a file the driver read that a trial's node does not have, or any other exception of the
    same type and message, such as the user's task code failing in a Ray worker), the search stops at once instead
    of running every trial into it. A trial that reported an epoch first, different failures, or running out of
    memory (which depends on the configuration) let the search go on."""

    _live: ClassVar[weakref.WeakValueDictionary[str, BadInput]] = weakref.WeakValueDictionary()

    def __init__(self, total: int, key: str | None = None) -> None:
        self.key = key or uuid.uuid4().hex
        self.needed = min(2, total)  # two trials agreeing: not one trial's sampled params
        self.first: dict[str, ConfigError | None] = {}  # trial id → its first outcome: its failure or None (fine)
        self.error: ConfigError | None = None
        self.runs: TrialRuns | None = None  # the MLflow side of the search it watches (its callback's)
        BadInput._live[self.key] = self

    def __reduce__(self) -> tuple[Any, ...]:
        # The stopper and the callback hold it; Tune pickles both into its experiment state (tuner.pkl): unpickled
        # in one process, they are one object again, which Tuner.restore's caller finds in _live
        return _bad_input, (self.key, self.needed)

    def outcome(self, trial_id: str, error: BaseException | None) -> None:
        if trial_id in self.first or self.error is not None or len(self.first) >= self.needed:
            return
        self.first[trial_id] = as_bad_input(error)
        errors = list(self.first.values())
        if len(errors) == self.needed and all(errors) and len({str(e) for e in errors}) == 1:
            self.error = errors[0]

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.error is not None


class _NoConfigErrorTraceback(logging.Filter):
    """Tune logs a failed trial's whole traceback; for a ConfigError the search's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConfigError))


def quiet_config_errors() -> None:
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _NoConfigErrorTraceback) for f in logger.filters):
        logger.addFilter(_NoConfigErrorTraceback())


def as_bad_input(error: BaseException | None) -> ConfigError | None:
    """A trial's failure as the search's one line: a ConfigError as it is; any other exception named by its type and
    message under the key ``trials``; None for no failure, or for running out of memory (another configuration
    may fit)."""
    if error is None or isinstance(error, ConfigError):
        return error
    text = one_line(error)
    if isinstance(error, MemoryError) or "out of memory" in text.lower():
        return None
    return ConfigError("trials", f"{type(error).__name__}: {text}",
                       "a task whose trials run where the driver's does (docs/your-task.md#what-a-trial-sees)",
                       problem="the first trials failed alike; the search stopped")


def _bad_input(key: str, needed: int) -> BadInput:
    return BadInput._live.get(key) or BadInput(needed, key)


def _trial_error(trial: Any) -> BaseException | None:
    """The exception a trial failed with, as the trial raised it (Ray's wrapper taken off), if Tune kept it."""
    path = getattr(trial, "pickled_error_file", None)  # written in the driver before the callbacks hear of it
    try:
        with open(path, "rb") as handle:
            error = cloudpickle.load(handle)
    except Exception:  # none, or not loadable here: Tune keeps the text alone
        return None
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


class TrialEvents(ray_tune.Callback):
    """Runs in the driver: hands each Tune trial event to MLflow (``TrialRuns``) and prints a line as a trial ends;
    tells ``bad_input`` how each of the first trials went."""

    def __init__(self, runs: TrialRuns, searched: list[str], total: int, bad_input: BadInput) -> None:
        self.runs = runs
        self.searched = searched
        self.total = total
        self.bad_input = bad_input
        bad_input.runs = runs

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.runs.run_id(trial.trial_id, *trial_params(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.bad_input.outcome(trial.trial_id, _trial_error(trial))  # failed; Tune retries it from its checkpoint

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("epoch", 1) >= 1:  # a trained epoch; epoch 0 is the start, scored before any training step
            self.bad_input.outcome(trial.trial_id, None)
        # Tune's own keys are left out but where the trial ran (pid, hostname, node_ip), which its run is tagged with
        ours = {k: v for k, v in result.items() if k not in AUTO_RESULT_KEYS or k in TAG_KEYS}
        self.runs.result(trial.trial_id, *trial_params(trial), ours,
                         first_since_restore=result.get("iterations_since_restore") == 1)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.bad_input.error is not None:
            return  # stopped for bad input (_fit ends its run)
        self._say(trial, self.runs.complete(trial.trial_id, *trial_params(trial)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.bad_input.outcome(trial.trial_id, _trial_error(trial))
        error_file = getattr(trial, "error_file", None) or ""
        self._say(trial, self.runs.error(trial.trial_id, *trial_params(trial), error_file))

    def _say(self, trial: Any, outcome: str | None) -> None:
        if outcome is None:
            return
        params, tags = trial_params(trial)
        keys = [*self.searched, *(["seed"] if "candidate" in tags else [])]
        values = ", ".join(f"{k}={short(params.get(k))}" for k in keys)
        say(f"  [{len(self.runs.ended)}/{self.total}] trial {trial.trial_id} ({values}): {outcome}"
            f"{self.runs.progress(trial.trial_id)}")


def stop_for_bad_input(bad_input: BadInput, runs: TrialRuns) -> None:
    """After a search the first trials' shared failure stopped: the trials that met it end FAILED (the others
    KILLED with the search), and the error is raised for the CLI's one line."""
    error = bad_input.error
    if error is None:
        return
    for trial_id, met in bad_input.first.items():
        if met is not None:
            runs.fail_open(trial_id, str(met.value) if met.key == "trials" else f"ConfigError: {met}")
    raise TrialConfigError(error.key, error.value, error.allowed, error.problem)
