"""Benchmark: the image task's epoch time and training memory by freeze depth, against the FLOP bound.

    python benchmarks/image_freeze.py [--model resnet18 --model vit_tiny_patch16_224] [--size 64] [--repeats 3]

A timm model (random init: speed and memory do not depend on the weights) on an image folder of UCI digits that
this script writes (scikit-learn's, upsampled to --size px; no augmentation, so every epoch does the same work),
on the CPU with one thread. For each freeze_stop k (0 to all but the head) it measures, in this one run and
after a warm-up epoch, the mean training seconds per epoch (the minimum over --repeats interleaved runs) and
epoch 1's peak training memory (the exact count: parameters, gradients, optimizer state, saved activations), and
prints them as ratios to freezing nothing: speed-up T_0 / T_k against the bound 1/R, R = 1 - 2*phi/3 for the
frozen share phi of forward FLOPs (backward costs about twice the forward, and a frozen prefix needs neither
weight nor input gradients), and memory M_k / M_0. Loading and decoding the images is part of each epoch (as in
a real search), so the speed-up stays below the bound where data loading costs more than the frozen compute.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tune.config import TrainConfig
from tune.tasks.image import make_task, write_example
from tune.train import Trial


def measure(task, cfg: TrainConfig) -> tuple[float, float, float]:
    """Mean training seconds per epoch, epoch 1's peak training memory (MB), the frozen FLOP share."""
    trial = Trial(task, cfg)
    epochs = list(trial.epochs())
    return (statistics.fmean(m["epoch_time_s"] for m in epochs), epochs[0]["peak_mem_mb"],
            trial.summary.frozen_flops_share)


def bench(model: str, folder: Path, size: int, epochs: int, repeats: int) -> None:
    task = make_task(model=model, data=str(folder), image_size=size, augment=False, workers=0)
    depth = task.build_model().n_blocks
    base = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, optimizer="adamw")
    measure(task, TrainConfig(epochs=1, batch_size=32))  # warm-up: allocator, kernels, caches
    rows = {k: [] for k in range(depth)}
    for _ in range(repeats):  # interleaved, so that drift on the machine hits every depth alike
        for k in range(depth):
            rows[k].append(measure(task, TrainConfig(**{**base.__dict__, "freeze_stop": k})))
    t0, m0 = min(r[0] for r in rows[0]), rows[0][0][1]
    names = task.build_model().block_names
    print(f"{model} at {size} px, {len(task.train_data)} training images, batch 32, {epochs} epochs, 1 thread")
    print(f"{'k':>2} {'frozen':<24} {'phi':>6} {'speed-up':>8} {'1/R':>6} {'of 1/R':>7} {'memory':>7}")
    for k in range(depth):
        t, memory, phi = min(r[0] for r in rows[k]), rows[k][0][1], rows[k][0][2]
        bound = 1 / (1 - 2 * phi / 3)
        frozen = f"[0, {k})" + (f" {names[k - 1]}" if k else "")
        print(f"{k:>2} {frozen:<24} {phi:6.3f} {t0 / t:8.2f} {bound:6.2f} {t0 / t / bound:7.2f} {memory / m0:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="a timm model (repeatable; default resnet18 and "
                        "vit_tiny_patch16_224)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--per-class", type=int, default=20, help="training images per digit (default 20)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_example(Path(scratch) / "digits", per_class=args.per_class, val_per_class=5, size=args.size)
        for model in args.model or ["resnet18", "vit_tiny_patch16_224"]:
            bench(model, folder, args.size, args.epochs, args.repeats)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
