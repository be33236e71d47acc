"""Benchmark: a built-in task's epoch time and training memory by freeze depth, against the FLOP bound.

    python benchmarks/task_freeze.py [--model resnet18 --model vit_tiny_patch16_224] [--size 64] [--repeats 3]
    python benchmarks/task_freeze.py --task text [--layers 4 --hidden 128] [--max-length 32]

image: a timm model (random init: speed and memory do not depend on the weights) on an image folder of UCI digits
this script writes (scikit-learn's, upsampled to --size px; no augmentation, so every epoch does the same work).
text: a BERT-style encoder built from a config (--layers, --hidden) with a WordPiece tokenizer trained on 600
generated sentences, saved as a model folder, on those sentences (CSV). Both on the CPU with one thread.
For each freeze_stop k (0 to all but the head) it measures, in this one run and after a warm-up epoch, the mean
training seconds per epoch (the minimum over --repeats interleaved runs) and epoch 1's peak training memory (the
exact count: parameters, gradients, optimizer state, saved activations), and prints them as ratios to freezing
nothing: speed-up T_0 / T_k against the bound 1/R, R = 1 - 2*phi/3 for the frozen share phi of forward FLOPs
(backward costs about twice the forward, and a frozen prefix needs neither weight nor input gradients), and
memory M_k / M_0. Reading the data is part of each epoch (as in a search), so the speed-up stays below the bound
where data loading costs more than the frozen compute. These runs have the frozen-prefix cache off. Where the cache
applies (the text task's encoders; never the image task's timm models, which are not a plain sequence of blocks
and take no named inputs), the same depths run again with it on: the frozen part then costs nothing after the
first epoch's one forward pass, so the bound is 1/(1 - phi) over the epochs measured (that pass included, in the
first epoch), and the memory holds the cached hidden states instead of the frozen part's activations.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tune.settings.config import TrainConfig
from tune.tasks import image, text
from tune.training.train import LoopTrial


def measure(task, cfg: TrainConfig) -> tuple[float, float, float, str]:
    """Mean training seconds per epoch, epoch 1's peak training memory (MB), the frozen FLOP share, the cache."""
    trial = LoopTrial(task, cfg)
    epochs = list(trial.epochs())
    return (statistics.fmean(m["epoch_time_s"] for m in epochs), epochs[0]["peak_mem_mb"],
            trial.summary.frozen_flops_share, trial.prefix_cache)


def bench(title: str, task, epochs: int, repeats: int) -> None:
    depth = task.build_model().n_blocks
    base = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, optimizer="adamw")
    measure(task, TrainConfig(epochs=1, batch_size=32))  # warm-up: allocator, kernels, caches
    caches = ["off", "auto"]
    rows: dict[tuple[int, str], list] = {(k, c): [] for k in range(depth) for c in caches}
    for _ in range(repeats):  # interleaved, so that drift on the machine hits every depth alike
        for k in range(depth):
            for cache in caches:
                rows[k, cache].append(measure(task, TrainConfig(**{**base.__dict__, "freeze_stop": k,
                                                                   "prefix_cache": cache})))
    cached = any(rows[k, "auto"][0][3].startswith("on") for k in range(depth))
    t0, m0 = min(r[0] for r in rows[0, "off"]), rows[0, "off"][0][1]
    names = task.build_model().block_names
    print(f"{title}, {len(task.train_data)} training samples, batch 32, {epochs} epochs, 1 thread")
    labels = [f"[0, {k})" + (f" {names[k - 1]}" if k else "") for k in range(depth)]
    width = max(map(len, labels))
    extra = f" {'cached':>7} {'1/(1-phi)':>9} {'of it':>6} {'memory':>7}" if cached else ""
    print(f"{'k':>2} {'frozen (through)':<{width}} {'phi':>6} {'speed-up':>8} {'1/R':>6} {'of 1/R':>7} {'memory':>7}"
          + extra)
    for k in range(depth):
        t, memory, phi, _ = min(rows[k, "off"])
        bound = 1 / (1 - 2 * phi / 3)
        line = f"{k:>2} {labels[k]:<{width}} {phi:6.3f} {t0 / t:8.2f} {bound:6.2f} {t0 / t / bound:7.2f} " \
               f"{memory / m0:7.2f}"
        if cached:
            tc, memory_c, _, how = min(rows[k, "auto"])
            cache_bound = 1 / (1 - phi)
            of_bound = f"{t0 / tc / cache_bound:6.2f}" if cache_bound < 100 else f"{'-':>6}"  # fixed costs rule
            line += (f" {t0 / tc:7.2f} {min(cache_bound, 999):9.2f} {of_bound} {memory_c / m0:7.2f}"
                     if how.startswith("on") else f"  ({how})")
        print(line)


def text_task(folder: Path, layers: int, hidden: int, max_length: int):
    """A BERT-style model folder and a CSV of generated sentences (label: a good or a bad word in it)."""
    import csv
    import random

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = random.Random(0)
    good, bad = ["great", "lovely", "superb", "fine", "warm"], ["awful", "dull", "poor", "grim", "cold"]
    nouns = ["film", "meal", "book", "song", "trip", "room", "show", "city", "game", "talk"]
    rows = []
    for _ in range(600):
        label = rng.choice(["pos", "neg"])
        words = [f"the {rng.choice(nouns)} was {rng.choice(good if label == 'pos' else bad)}"]
        words += [f"and the {rng.choice(nouns)} was {rng.choice(good + bad)}" for _ in range(rng.randint(1, 5))]
        rows.append((" ".join(words), label))
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([t for t, _ in rows], trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder / "model")
    config = transformers.BertConfig(vocab_size=fast.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(folder / "model")
    for split, part in (("train", rows[:500]), ("val", rows[500:])):
        with (folder / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return text.make_task(model=str(folder / "model"), data=str(folder / "train.csv"),
                          val_data=str(folder / "val.csv"), max_length=max_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["image", "text"], default="image")
    parser.add_argument("--model", action="append", help="image: a timm model (repeatable; default resnet18 and "
                        "vit_tiny_patch16_224)")
    parser.add_argument("--size", type=int, default=64, help="image: side in pixels (default 64)")
    parser.add_argument("--per-class", type=int, default=20, help="image: training images per digit (default 20)")
    parser.add_argument("--layers", type=int, default=4, help="text: encoder layers (default 4)")
    parser.add_argument("--hidden", type=int, default=128, help="text: hidden size (default 128)")
    parser.add_argument("--max-length", type=int, default=32, help="text: tokens per example (default 32)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        if args.task == "text":
            task = text_task(Path(scratch), args.layers, args.hidden, args.max_length)
            bench(f"BERT-style, {args.layers} layers, hidden {args.hidden}, {args.max_length} tokens", task,
                  args.epochs, args.repeats)
            return
        folder = image.write_example(Path(scratch) / "digits", per_class=args.per_class, val_per_class=5,
                                     size=args.size)
        for model in args.model or ["resnet18", "vit_tiny_patch16_224"]:
            task = image.make_task(model=model, data=str(folder), image_size=args.size, augment=False, workers=0)
            bench(f"{model} at {args.size} px", task, args.epochs, args.repeats)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
