"""What a search returns: its report (trials at their best epoch, the frontier, the race, the recommendation), where
MLflow keeps it and the recommended model; built by the search that ran (``tune.driver.study.Study.run``) or from MLflow
alone (``tune.driver.study.rebuild_report``), and returned as it is by ``tune.FreezeSearch.run`` and
``tune.load_search``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tune.reporting.analysis import TrialResult
    from tune.reporting.report import Report

__all__ = ["Recommended", "SearchResult"]


@dataclass(frozen=True)
class Recommended:
    """The recommended freeze range: the cheapest configuration proven within the tolerance of the best (after the
    confirmation race; the search's single trial where there was none)."""

    freeze_range: str  # "[0, 3)": blocks 0, 1, 2 frozen
    policy: str  # the range and what a policy adds: "[0, 3) thaw@2 decay 0.8"; a hard freeze: the range
    freeze: tuple[int, int]  # (start, stop) of a range; a set of blocks {i, j}: (i, j + 1)
    params: dict[str, Any]  # its search trial's searched values (lr, freeze_stop, ...)
    score: float  # the validation score: the mean over the confirmation's seeds, else the trial's
    interval: tuple[float, float] | None  # the mean's confidence interval after a confirmation
    seeds: int  # confirmation seeds it ran (0: none)
    decided: bool | None  # whether the race proved it within the tolerance (None: no confirmation)
    test_score: float | None  # on the task's test split, scored once after the choice (None: no test split)
    epoch_time_s: float  # its search trial's (as the parent run's recommended_epoch_time_s)
    peak_mem_mb: float
    trial: TrialResult = field(repr=False)  # its search trial at its best epoch


@dataclass
class SearchResult:
    """What a search left: its report (trials at their best epoch, the frontier, the race, the recommendation),
    where MLflow keeps it, the recommended model."""

    status: str  # the parent run's: FINISHED, FAILED or KILLED
    parent_run_id: str | None
    experiment: str
    tracking_uri: str
    report: Report | None = field(default=None, repr=False)
    report_dir: Path | None = None  # the folder the report, plots and summary were written to
    # this search's registered model version (models:/<name>/<version>), or its logged URI where the registry
    # refused; the alias models:/<name>@recommended moves to the latest search's
    model_uri: str | None = None
    probe_score: float | None = None  # the linear probe on the frozen features: the reference

    @property
    def text(self) -> str:
        """The report as the console prints it."""
        return self.report.text if self.report is not None else ""

    @property
    def trials(self) -> list[TrialResult]:
        """The search's trials, each at its best epoch."""
        return list(self.report.trials) if self.report is not None else []

    @property
    def frontier(self) -> list[TrialResult]:
        """The trials no other trial beats on every objective (score, epoch time, memory by default)."""
        return list(self.report.front) if self.report is not None else []

    @property
    def recommendation(self) -> Recommended | None:
        """None when there is none: no trial finished, or the scores cannot tell the trials apart."""
        built = self.report
        if built is None or built.chosen is None:
            return None
        from tune.reporting.report import test_scores

        chosen, confirmed = built.chosen, built.confirmed_choice
        tested = test_scores(built)
        return Recommended(
            freeze_range=chosen.policy.freeze_range, policy=chosen.policy.label, freeze=chosen.freeze_key,
            params={key: chosen.params[key] for key in built.recommendation.searched if key in chosen.params},
            score=confirmed.mean if confirmed else chosen.score,
            interval=confirmed.interval if confirmed else None, seeds=len(confirmed.scores) if confirmed else 0,
            decided=built.decision.decided if built.decision is not None else None,
            test_score=statistics.fmean(tested) if tested else None,
            epoch_time_s=chosen.epoch_time_s, peak_mem_mb=chosen.peak_mem_mb, trial=chosen)

    def __str__(self) -> str:
        return self.text or f"search {self.experiment}: {self.status}"
