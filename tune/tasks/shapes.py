"""A small synthetic detection data set in the Ultralytics layout, drawn here (nothing downloads): for the yolo
tests, the yolo benchmark and a first offline run of the yolo spaces::

    python -m tune.tasks.shapes DIR [--train N] [--val N] [--size PX]    # prints the dataset yaml's path

Each image is a noisy grey background with 1-3 shapes: class 0 a bright filled square, class 1 a dark filled
circle, at random places and sizes. Labels are YOLO text lines ``class x_center y_center width height``
(normalised), one file per image.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NAMES = {0: "square", 1: "circle"}


def _image(rng: random.Random, size: int) -> tuple[Image.Image, list[str]]:
    noise = np.random.default_rng(rng.randrange(2**32)).integers(90, 150, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    draw = ImageDraw.Draw(image)
    labels = []
    for _ in range(rng.randint(1, 3)):
        cls = rng.randint(0, 1)
        side = rng.randint(size // 5, size // 2)
        x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
        box = (x0, y0, x0 + side, y0 + side)
        if cls == 0:
            draw.rectangle(box, fill=(240, 240, 60))
        else:
            draw.ellipse(box, fill=(20, 30, 160))
        labels.append(f"{cls} {(x0 + side / 2) / size:.6f} {(y0 + side / 2) / size:.6f} "
                      f"{side / size:.6f} {side / size:.6f}")
    return image, labels


def make_detection_data(root: Path, n_train: int = 32, n_val: int = 16, size: int = 64, seed: int = 0,
                        n_test: int = 0) -> Path:
    """Write images/{train,val} and labels/{train,val} under ``root`` (and a test split of ``n_test`` images) and a
    dataset yaml; returns the yaml."""
    rng = random.Random(seed)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        if not count:
            continue
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, labels = _image(rng, size)
            image.save(root / "images" / split / f"{index:04d}.png")
            (root / "labels" / split / f"{index:04d}.txt").write_text("\n".join(labels) + "\n")
    data = root / "shapes.yaml"
    names = "\n".join(f"  {k}: {v}" for k, v in NAMES.items())
    test = "test: images/test\n" if n_test else ""
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\n{test}names:\n{names}\n")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tune.tasks.shapes", description="Draw a synthetic detection set")
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=256)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_detection_data(args.root.resolve(), args.train, args.val, args.size, args.seed))


if __name__ == "__main__":
    main()
