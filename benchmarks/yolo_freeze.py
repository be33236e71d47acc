"""The YOLOv5 guide's three-way study at small scale: freeze 0 / 10 (backbone) / 24 (all but Detect), in one run.

    python benchmarks/yolo_freeze.py [--model yolov5nu.yaml] [--epochs 10] [--pretrain-epochs 20] [--imgsz 128]

Needs the yolo extra (its venv: README). Data: synthetic shapes sets (tune.tasks.shapes, 256 train / 64 val
images), drawn into a temporary folder. No pretrained weights can be downloaded here, so the model is first
trained from scratch on one shapes set (--pretrain-epochs, nothing frozen) and its weights, saved as a state
dict, are the "pretrained" weights fine-tuned on a second set drawn with another seed (--pretrain-epochs 0:
random weights, which measures the costs of freezing only). Trials run one after another in this
process with the same seed; each prints its last epoch's mAP50 / mAP50-95, its median training epoch time, its
peak training memory (exact count on a CPU, torch.cuda.max_memory_allocated on a GPU) and, on a GPU, the
utilisation; ratios are to freezing nothing, measured in this one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from tune.settings.config import TrainConfig
from tune.tasks.shapes import make_detection_data
from tune.tasks.yolo import make_task
from tune.training.train import make_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="yolov5nu.yaml")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        weights = None
        if args.pretrain_epochs:
            source = make_detection_data(Path(root) / "source", n_train=256, n_val=64, size=args.imgsz, seed=100)
            task = make_task(data=str(source), model=args.model, imgsz=args.imgsz, workers=0)
            trial = make_trial(task, TrainConfig(epochs=args.pretrain_epochs, batch_size=args.batch,
                                                 optimizer="sgd", lr=0.01, device=args.device))
            seen: list[dict] = []
            trial.run(seen.append)
            weights = str(Path(root) / "pretrained.pt")
            torch.save(trial.state_dict()["model"], weights)  # the EMA weights it validated
            print(f"pretrained {args.pretrain_epochs} epochs on another shapes set: mAP50 {seen[-1]['mAP50']:.3f}, "
                  f"mAP50-95 {seen[-1]['mAP50-95']:.3f}")
        data = make_detection_data(Path(root) / "target", n_train=256, n_val=64, size=args.imgsz)
        task = make_task(data=str(data), model=args.model, imgsz=args.imgsz, workers=0, weights=weights)
        print(f"{args.model}, {args.epochs} epochs, image {args.imgsz}, batch {args.batch}, {args.device}, "
              f"{args.threads} thread(s), weights: {'pretrained' if weights else 'random'}")
        print(f"{'freeze':>6} {'trainable':>10} {'flops':>6} {'mAP50':>6} {'mAP50-95':>8} {'epoch s':>8} "
              f"{'ratio':>6} {'mem MB':>8} {'ratio':>6} {'gpu %':>6}")
        base: dict[str, float] = {}
        for freeze in (0, 10, 24):
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, optimizer="sgd", lr=0.01, freeze=freeze,
                              device=args.device)
            metrics: list[dict] = []
            make_trial(task, cfg).run(metrics.append)
            last = metrics[-1]
            epoch_s = statistics.median(m["epoch_time_s"] for m in metrics[1:] or metrics)  # epoch 1 warms up
            memory = max(m["peak_mem_mb"] for m in metrics)
            base.setdefault("time", epoch_s)
            base.setdefault("mem", memory)
            util = statistics.mean(m["gpu_util_pct"] for m in metrics) if "gpu_util_pct" in last else float("nan")
            print(f"{freeze:>6} {last['trainable_params']:>10,} {last['frozen_flops_share']:>6.2f} "
                  f"{last['mAP50']:>6.3f} {last['mAP50-95']:>8.3f} {epoch_s:>8.3f} {epoch_s / base['time']:>6.2f} "
                  f"{memory:>8.1f} {memory / base['mem']:>6.2f} {util:>6.1f}")


if __name__ == "__main__":
    main()
