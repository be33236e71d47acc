"""A report's files: report.txt, the plots (score by epoch, time and memory by freeze range, the frontier) and
summary.md linking them; matplotlib, imported when they are written."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tune.reporting.analysis import called
from tune.reporting.records import TrialRecord
from tune.reporting.report import Report

__all__ = ["write_report"]


# -- the files ------------------------------------------------------------------------------------------------------
def write_report(report: Report, records: Sequence[TrialRecord], out_dir: Path, title: str) -> list[Path]:
    """Write report.txt, the plots and summary.md (linking them) into ``out_dir``; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    keys = {r.label: r.freeze_key for r in report.trials}
    ranges = sorted(keys, key=lambda label: (keys[label], label))  # policies
    colours = {fr: plt.get_cmap("viridis")(i / max(1, len(ranges) - 1)) for i, fr in enumerate(ranges)}
    by_name = {r.name: r for r in report.trials}
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = set()
    for record in sorted(records, key=lambda rec: by_name[rec.name].freeze_key if rec.name in by_name else (0, 0)):
        result = by_name.get(record.name)
        if result is None:
            continue
        steps, scores = zip(*record.history["score"], strict=True)
        label = None if result.label in labelled else called(result.policy)
        labelled.add(result.label)
        ax.plot(steps, scores, color=colours[result.label], alpha=0.8, marker=".", label=label)
    _reference_line(ax, report.reference)
    ax.set(xlabel="epoch", ylabel="score", title=f"{title}: score per epoch by freeze range")
    ax.legend(fontsize=7, ncol=2)
    files.append(_save(fig, out_dir / "score_by_epoch.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, label in ((left, "epoch_time_s", "training time per epoch (s)"),
                                (right, "peak_mem_mb", "peak training memory (MB)")):
        for i, freeze_range in enumerate(ranges):
            values = [r.values.get(metric, math.nan) for r in report.trials if r.label == freeze_range]
            axis.scatter([i] * len(values), values, color=colours[freeze_range], alpha=0.7)
            axis.plot([i - 0.3, i + 0.3], [statistics.median(values)] * 2, color="black")
        axis.set_xticks(range(len(ranges)), ranges, rotation=45, fontsize=8)
        axis.set(xlabel="freeze range", ylabel=label)
    fig.suptitle(f"{title}: time and memory by freeze range")
    files.append(_save(fig, out_dir / "resources_by_range.png"))

    # time on the frontier's own axis: per epoch, or (policies whose epochs cost more after a thaw) to the best epoch
    time_metric = next((m for m, _ in report.objectives if m in ("epoch_time_s", "train_time_s")), "epoch_time_s")

    def cost(r: Any) -> float:
        return r.values.get(time_metric, math.nan)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = ax.scatter([cost(r) for r in report.trials], [r.score for r in report.trials],
                        c=[r.peak_mem_mb for r in report.trials], cmap="plasma", s=30, alpha=0.8)
    fig.colorbar(points, ax=ax, label="peak memory (MB)")
    ax.scatter([cost(r) for r in report.front], [r.score for r in report.front], s=110, facecolors="none",
               edgecolors="black", label="frontier (" + ", ".join(m for m, _ in report.objectives) + ")")
    # the staircase of the two plotted objectives alone: each step is a trial no faster one outscores
    stairs, best_so_far = [], -math.inf
    for r in sorted(report.trials, key=lambda r: (cost(r), -r.score)):
        if r.score > best_so_far:
            stairs.append(r)
            best_so_far = r.score
    ax.step([cost(r) for r in stairs], [r.score for r in stairs], where="post", color="black", linewidth=0.8,
            alpha=0.6, label="best score at this time or less")
    for r in report.front:
        ax.annotate(r.label, (cost(r), r.score), fontsize=7, xytext=(4, 4), textcoords="offset points")
    chosen = report.chosen
    if chosen is not None:
        ax.scatter([cost(chosen)], [chosen.score], marker="*", s=250, color="red", label="recommended",
                   zorder=3)
    _reference_line(ax, report.reference)
    ax.set(xlabel="training time per epoch (s)" if time_metric == "epoch_time_s" else
           "training time to the best epoch (s)", ylabel="score at the best epoch", title=f"{title}: frontier")
    ax.legend(fontsize=8)
    files.append(_save(fig, out_dir / "frontier.png"))

    text_file = out_dir / "report.txt"
    text_file.write_text(report.text + "\n")
    summary = out_dir / "summary.md"
    images = "\n\n".join(f"![{path.stem}]({path.name})" for path in files)
    summary.write_text(f"# {title}\n\n{images}\n\n```\n{report.text}\n```\n")
    return [*files, text_file, summary]


def _reference_line(ax: Any, reference: float | None) -> None:
    """The linear probe's score, where the heads started from it: the line every depth should reach."""
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1,
                   label=f"linear probe ({reference:.3f}): every head's start")


def _save(fig: object, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
