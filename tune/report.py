"""What a search found, from MLflow data alone: trials compared at their best epoch, a table by trial and
a table by freeze depth. (Plots, the frontier and the recommendation rule build on these rows.)"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from tune.tracking import TrialRecord

__all__ = ["TrialResult", "best_trial", "depth_table", "summarise", "trial_table"]


@dataclass(frozen=True)
class TrialResult:
    name: str
    status: str
    freeze_range: str
    freeze_stop: int | None
    params: dict[str, str]
    best_epoch: int
    score: float  # at the best epoch
    time_to_best_s: float  # cumulative training time at the best epoch
    epoch_time_s: float  # mean training time per epoch
    peak_mem_mb: float
    epochs_run: int
    stopped_early: bool


def _at(history: list[tuple[int, float]], step: int) -> float:
    values = [v for s, v in history if s == step]
    return values[-1] if values else float("nan")


def summarise(records: Sequence[TrialRecord]) -> list[TrialResult]:
    """Each trial at its best epoch (by score; the earliest on ties), best first. Trials with no epoch are
    left out."""
    results = []
    for record in records:
        scores = record.history.get("score", [])
        if not scores:
            continue
        best_epoch, best = max(scores, key=lambda point: (point[1], -point[0]))
        epoch_times = [v for _, v in record.history.get("epoch_time_s", [])]
        memory = [v for _, v in record.history.get("peak_mem_mb", [])]
        freeze_range = record.params.get("freeze_range", "?")
        stop = freeze_range.strip("[)").split(",")[-1].strip() if freeze_range != "?" else ""
        results.append(TrialResult(
            name=record.name, status=record.status, freeze_range=freeze_range,
            freeze_stop=int(stop) if stop.isdigit() else None, params=record.params, best_epoch=best_epoch,
            score=best, time_to_best_s=_at(record.history.get("train_time_s", []), best_epoch),
            epoch_time_s=statistics.fmean(epoch_times) if epoch_times else float("nan"),
            peak_mem_mb=max(memory) if memory else float("nan"), epochs_run=scores[-1][0],
            stopped_early=record.tags.get("stopped_early") == "True"))
    return sorted(results, key=lambda r: (-r.score, r.time_to_best_s))


def best_trial(results: Sequence[TrialResult]) -> TrialResult | None:
    return results[0] if results else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def trial_table(results: Sequence[TrialResult], searched: Sequence[str]) -> str:
    """One row per trial, best first: freeze range, the other searched values, score at the best epoch,
    training time to it, mean epoch time, peak memory, epochs run."""
    others = [k for k in searched if k not in ("freeze", "freeze_start", "freeze_stop")]
    header = ["trial", "freeze", *others, "score", "best@", "time_s", "epoch_s", "mem_mb", "epochs", "status"]
    rows = []
    for r in results:
        values = [_short(r.params.get(k, "")) for k in others]
        status = r.status if not r.stopped_early else f"{r.status} (ASHA stop)"
        rows.append([r.name, r.freeze_range, *values, f"{r.score:.4f}", str(r.best_epoch), f"{r.time_to_best_s:.2f}",
                     f"{r.epoch_time_s:.3f}", f"{r.peak_mem_mb:.2f}", str(r.epochs_run), status])
    return _table(header, rows)


def depth_table(results: Sequence[TrialResult]) -> str:
    """The trade-off by freeze depth: trials, best score, median epoch time and peak memory."""
    by_range: dict[str, list[TrialResult]] = {}
    for r in results:
        by_range.setdefault(r.freeze_range, []).append(r)
    header = ["freeze", "trials", "best score", "median epoch_s", "mem_mb"]
    rows = []
    for freeze_range, group in sorted(by_range.items(), key=lambda kv: (kv[1][0].freeze_stop or 0, kv[0])):
        rows.append([freeze_range, str(len(group)), f"{max(r.score for r in group):.4f}",
                     f"{statistics.median(r.epoch_time_s for r in group):.3f}",
                     f"{max(r.peak_mem_mb for r in group):.2f}"])
    return _table(header, rows)


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.3g}" if not number.is_integer() else str(int(number))
