"""The MLflow side of a search's trials: one child run per trial (TrialRuns), fed by the search's Tune callback
in the driver, through a SearchTracker; what a trial's result becomes (param, tag in TAG_KEYS, metric), and why
a failed trial failed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tune.reporting.records import short
from tune.settings.policy import Policy
from tune.settings.space import LABELLED_KEYS
from tune.tracker.tracking import TRIAL_ID_TAG, SearchTracker

__all__ = ["TAG_KEYS", "TrialRuns", "failure_reason", "trial_policy"]

# Result keys that describe where and how a trial ran: tags of its MLflow run, not metrics.
TAG_KEYS = ("mem_source", "prefix_cache", "head_start", "precision", "channels_last", "node_ip", "node_id",
            "hostname", "pid", "trial_cpus", "trial_gpus", "diverged")


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
        self.searched = [key for key in searched if key not in LABELLED_KEYS]  # the policy's label names those
        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.best_score: dict[str, float] = {}
        self.ended: set[str] = set()  # trials that finished or failed
        self.diverged: set[str] = set()
        self.closed: set[str] = set()  # trials whose run had already ended when a search was restored

    def run_name(self, policy: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """What a trial's run is called: its policy and the other searched values, e.g. ``[0, 4) lr=0.0012`` or
        ``[0, 7) thaw@2 lr=0.0012`` (and its seed, for a confirmation run)."""
        keys = [*self.searched, *(["seed"] if "candidate" in tags else [])]
        return " ".join([policy, *(f"{k}={short(params[k])}" for k in keys if k in params)])

    def progress(self, trial_id: str) -> str:
        """How far the search is, for the console line of ``trial_id``: the best score so far and the other trial
        that has it, or that this trial has it (a tie included)."""
        others = {other: score for other, score in self.best_score.items() if other != trial_id}
        own = self.best_score.get(trial_id)
        if own is not None and (not others or own >= max(others.values())):
            return "; the best so far"
        if not others:
            return ""
        best = max(others, key=others.get)
        return f"; best so far {others[best]:.4f} (trial {best})"

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
        if trial_id not in self.last_epoch:  # the first result carries the FreezeSummary and the policy
            policy = trial_policy(result)
            self.tracker.rename(run_id, self.run_name(policy.label, params, tags))
            self.tracker.log_params(run_id, {
                **policy.params(),
                "trainable_params": result["trainable_params"], "frozen_params": result["frozen_params"],
                "frozen_flops_share": f"{result['frozen_flops_share']:.4f}",
                "adapter_params": result.get("adapter_params", 0)})
            self.tracker.set_tags(run_id, {k: result[k] for k in TAG_KEYS if k in result})
        if result.get("diverged"):
            self.diverged.add(trial_id)
            self.tracker.set_tags(run_id, {"diverged": "true", "diverged_at_epoch": epoch})
        self.last_epoch[trial_id] = epoch
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
        scores = [(step, value) for step, value in self.tracker.metric_history(run_id, "score")
                  if math.isfinite(value)]
        best = max(scores, key=lambda point: (point[1], -point[0]), default=None)  # the earliest of a tie
        if best is not None:  # logged at the last step: the run's value in the UI's tables and charts (a restore too)
            self.tracker.log_metrics(run_id, {"best_epoch_score": best[1]}, step=epochs_run)
        if trial_id in self.diverged:
            self.tracker.end_trial(run_id, "FINISHED", tags={"epochs_run": epochs_run})
            return f"diverged (loss not finite) at epoch {epochs_run}"
        stopped_early = epochs_run < params.get("epochs", self.epochs)  # epochs may be searched
        self.tracker.end_trial(run_id, "FINISHED", tags={"epochs_run": epochs_run, "stopped_early": stopped_early})
        ran = f"{epochs_run} epoch{'s' * (epochs_run != 1)} run" + (", stopped early by ASHA" if stopped_early else "")
        return f"best {best[1]:.4f} at epoch {best[0]} ({ran})" if best else f"no finite score ({ran})"

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


def trial_policy(result: Mapping[str, Any]) -> Policy:
    """A trial's policy from its result: the params it reports (``policy_params``: tune.settings.policy.Policy.params),
    else the hard freeze of the range its FreezeSummary reports (a trial that reports no policy)."""
    if "policy_params" in result:
        return Policy.from_params(result["policy_params"])
    return Policy(frozen=tuple(range(int(result["freeze_start"]), int(result["freeze_stop"]))))


def failure_reason(error_file: str) -> str:
    """The last line of a trial's traceback that names an exception, e.g. 'RuntimeError: out of memory ...'."""
    try:
        lines = [line.strip() for line in Path(error_file).read_text().splitlines() if line.strip()]
    except OSError:
        return "unknown (no error file)"
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return (named[-1] if named else lines[-1] if lines else "unknown")[:500]
