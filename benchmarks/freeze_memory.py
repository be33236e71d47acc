"""Benchmark (c): training memory by freeze depth on the default model (exact count on CPU).

    python benchmarks/freeze_memory.py

Peak training memory (parameters + buffers + gradients + optimizer state + saved activations of one full
batch, + the cached prefix features with the cache on) for each depth, as a ratio to freezing nothing. On a
GPU the same trials report torch.cuda.max_memory_allocated instead (mem_source=cuda): the comparison of the
two counts needs a GPU and has not been run.
"""

from __future__ import annotations

import torch

from tune.settings.config import TrainConfig
from tune.tasks.digits import make_task
from tune.training.train import LoopTrial


def main() -> None:
    torch.set_num_threads(1)
    task = make_task(labels_per_class=100, val_size=100)
    print(f"{'k':>2} {'no cache MB':>12} {'ratio':>6} {'cache MB':>9} {'ratio':>6}  source")
    base = {}
    for k in range(8):
        row = []
        for cache in ("off", "auto"):
            cfg = TrainConfig(epochs=1, batch_size=64, freeze_stop=k, prefix_cache=cache)
            metrics = next(LoopTrial(task, cfg).epochs())
            base.setdefault(cache, metrics["peak_mem_mb"])
            row += [metrics["peak_mem_mb"], metrics["peak_mem_mb"] / base[cache]]
        print(f"{k:>2} {row[0]:12.2f} {row[1]:6.2f} {row[2]:9.2f} {row[3]:6.2f}  {metrics['mem_source']}")


if __name__ == "__main__":
    main()
