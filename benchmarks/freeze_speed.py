"""Benchmark (a) and (b): training-step speed-up by freeze depth on the default model, against the FLOP bounds.

    python benchmarks/freeze_speed.py [--epochs 5] [--repeats 3]

For each depth k it measures, in this one run (synchronised, after a warm-up epoch):
- the uncached epoch time T_k (prefix_cache off) → speed-up T_0 / T_k, against 1/R with R = 1 - 2*phi/3,
  phi = the measured share of forward FLOPs in the frozen prefix (backward ~ 2x forward);
- the cached epoch time over E epochs including the one-off prefix pass → speed-up against 1/R_c with
  R_c = (1 - phi) + phi/(3E).
It prints ratios only: absolute times on a shared machine are noise, ratios measured side by side are not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tune.settings.config import TrainConfig
from tune.tasks.digits import make_task
from tune.training.train import LoopTrial


def epoch_time(task, cfg: TrainConfig, epochs: int) -> tuple[float, float]:
    """Mean training seconds per epoch over ``epochs`` (the cache's one-off pass included), and phi."""
    trial = LoopTrial(task, cfg)
    seconds = [m["epoch_time_s"] for m in trial.epochs()][:epochs]
    return statistics.fmean(seconds), trial.summary.frozen_flops_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--labels-per-class", type=int, default=100, help="more data than the default search: "
                        "steps long enough to time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task(labels_per_class=args.labels_per_class, val_size=100)
    base = TrainConfig(epochs=args.epochs, batch_size=64, lr=1e-3)
    epoch_time(task, TrainConfig(epochs=1), 1)  # warm-up: allocator, kernels, caches
    print(f"{'k':>2} {'phi':>6} {'uncached':>9} {'1/R':>6} {'of 1/R':>7} {'cached':>8} {'1/R_c':>7} {'of 1/R_c':>8}")
    baseline = None
    for k in range(8):
        plain, cached = [], []
        for _ in range(args.repeats):  # interleaved, so that drift on the machine hits both alike
            t, phi = epoch_time(task, TrainConfig(**{**base.__dict__, "freeze_stop": k, "prefix_cache": "off"}),
                                args.epochs)
            plain.append(t)
            tc, _ = epoch_time(task, TrainConfig(**{**base.__dict__, "freeze_stop": k}), args.epochs)
            cached.append(tc)
        t, tc = min(plain), min(cached)
        baseline = baseline or t
        bound = 1 / (1 - 2 * phi / 3)
        bound_c = 1 / ((1 - phi) + phi / (3 * args.epochs))
        print(f"{k:>2} {phi:6.3f} {baseline / t:9.2f} {bound:6.2f} {baseline / t / bound:7.2f} "
              f"{baseline / tc:8.2f} {bound_c:7.2f} {baseline / tc / bound_c:8.2f}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
