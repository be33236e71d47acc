"""The built-in image-classification task: a timm or torchvision model fine-tuned on a folder of images.

Options (``task.options`` in a search space file):
- ``model``: a timm model name (``resnet18``, ``vit_small_patch16_224``, ``convnext_tiny``, any of
  ``timm.list_models()``) or a torchvision one as ``torchvision:resnet18``. Its blocks come from the model's own
  description (``tune.blocks``); ``python run_search.py layers`` lists them.
- ``data``: a folder holding ``train/<class>/<images>`` and ``val/<class>/<images>`` (the layout of
  ``torchvision.datasets.ImageFolder``; both splits with the same class folders), and optionally
  ``test/<class>/<images>``: a test split, scored once for the recommendation after the search, never to choose.
- ``weights``: a local file in the form the library saved it (a state dict, a ``.safetensors`` file, a training
  checkpoint holding one: ``tune.tasks.weights``); ``pretrained``: the library's own pretrained download, only on a
  machine that reaches the model hub; null: random init. ``trust_weights: true`` lets a pickled checkpoint load
  (it runs code when loaded; only a file you trust).
- ``new_head`` (true): the classifier (timm's ``get_classifier()``, torchvision's last Linear) is new, sized for
  the data's classes; the rest of the head block loads from the file. False keeps the file's classifier where
  its shape fits.
- ``image_size``: the side images are resized and cropped to (default: the model's own input size, 224 for most);
  the transforms come from the model's data config (timm's ``resolve_data_config`` / ``create_transform``;
  ImageNet's mean and std for torchvision models).
- ``augment`` (true): timm's training transform (random resized crop, flip, colour jitter), new every epoch;
  false: the evaluation transform for training too; a mapping: timm's ``create_transform`` training arguments
  over its defaults (``{hflip: 0.0, scale: [0.5, 1.0]}``: no flip for digits, crops of at least half the image).
- ``workers`` (2): DataLoader processes per trial.

``python -m tune.tasks.image example DIR`` writes an image folder from the UCI digits that ship with
scikit-learn (no download), to try the task on.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune.blocks import BlockModel, timm_blocks, torchvision_blocks
from tune.errors import ConfigError, one_line
from tune.tasks.base import Task, check_option, classification_metrics, takes_paths
from tune.tasks.weights import load_fitting, read_state_dict

__all__ = ["ImageInput", "block_model", "layers_model", "make_task", "write_example"]

_MODEL_ALLOWED = ("a timm model name (timm.list_models(), e.g. resnet18) or torchvision:<name> "
                  "(e.g. torchvision:resnet18)")


def _library(model: Any) -> tuple[str, str]:
    if not isinstance(model, str) or not model:
        raise ConfigError("task.options.model", model, _MODEL_ALLOWED)
    library, sep, name = model.partition(":")
    if not sep:
        library, name = "timm", model
    if library not in ("timm", "torchvision"):
        raise ConfigError("task.options.model", model, _MODEL_ALLOWED, problem=f"unknown library {library}")
    try:
        import timm  # the transforms are timm's for torchvision models too
        import torchvision
    except ImportError as err:
        raise ConfigError("task.name", "image", "the image task with its extra installed (pip install -e "
                          "'.[image]', beside torch==2.14.1 torchvision==0.29.1)", problem=one_line(err)) from None
    known = timm.is_model(name) if library == "timm" else name in torchvision.models.list_models(
        module=torchvision.models)
    if not known:
        raise ConfigError("task.options.model", model, _MODEL_ALLOWED, problem="unknown model")
    return library, name


def _create(library: str, name: str, num_classes: int, pretrained: bool, image_size: int | None) -> nn.Module:
    if library == "timm":
        import timm

        if image_size is not None:  # models with a fixed input size (a ViT's position table) take it as built
            try:
                return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, img_size=image_size)
            except TypeError:  # a convolutional model takes any size and no img_size argument
                pass
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    import torchvision

    if not pretrained:
        try:  # GoogLeNet and Inception v3 train with auxiliary heads unless told not to: one output here
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, aux_logits=False)
        except TypeError:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    model = torchvision.models.get_model(name, weights="DEFAULT")  # needs the hub: never run here
    (path,) = _classifier(model, library)
    parent, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent), attribute, nn.Linear(model.get_submodule(path).in_features, num_classes))
    return model


def _classifier(model: nn.Module, library: str) -> list[str]:
    """The module names of the classifier a new head replaces: timm's ``get_classifier()``, torchvision's last
    Linear layer. The rest of the head block (a ConvNeXt's head norm, a MobileNet's last conv) keeps its weights."""
    if library == "timm":
        heads = model.get_classifier()
        wanted = {id(head) for head in (heads if isinstance(heads, tuple) else (heads,))}
        return [name for name, module in model.named_modules() if id(module) in wanted]
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1:]


def _data_config(model: nn.Module, library: str, image_size: int | None) -> dict[str, Any]:
    from timm.data import resolve_data_config

    size = {} if image_size is None else {"input_size": (3, image_size, image_size)}
    if library == "timm":
        return resolve_data_config(size, model=model)
    return resolve_data_config(size or {"input_size": (3, 224, 224)})  # timm's defaults: ImageNet's mean, std


def block_model(model: str, num_classes: int, weights: str | None = None, trust_weights: bool = False,
                new_head: bool = True, image_size: int | None = None,
                state: Mapping[str, torch.Tensor] | None = None) -> BlockModel:
    """The model with a head for ``num_classes``, its weights loaded, as blocks read from the model itself.
    ``state``: the weights file's tensors, already read."""
    library, name = _library(model)
    try:
        module = _create(library, name, num_classes, weights == "pretrained", image_size)
    except Exception as err:  # a model that cannot be built this way, or a download that failed: one line
        if weights == "pretrained":
            raise ConfigError("task.options.weights", weights, "pretrained where the model hub is reachable, else "
                              "a local weights file", problem=one_line(err)) from None
        raise ConfigError("task.options.model", model, _MODEL_ALLOWED, problem=one_line(err)) from None
    size = _data_config(module, library, image_size)["input_size"]
    example = torch.zeros(1, *size)
    try:
        blocks = (timm_blocks if library == "timm" else torchvision_blocks)(module, example)
    except ValueError as err:  # no blocks to read from this model's description
        raise ConfigError("task.options.model", model, _MODEL_ALLOWED, problem=one_line(err)) from None
    if weights not in (None, "pretrained"):
        head = tuple(f"{name}." for name in _classifier(module, library))
        load_fitting(module, dict(state or read_state_dict(weights, trust_weights)), weights,
                     lambda name: name.startswith(head), keep_fitting=not new_head)
    return blocks


def _check_forward(blocks: BlockModel, model: str, image_size: int | None) -> None:
    """One forward pass on the example input, before any trial: a size the model cannot take fails here."""
    try:
        with torch.no_grad():
            blocks.module.eval()
            blocks.forward_example()
    except Exception as err:  # whatever the model raises: bad input, one line
        raise ConfigError("task.options.image_size", image_size, f"an input size {model} takes (null: its own)",
                          problem=one_line(err)) from None


class ImageInput:
    """An image model's preprocessing: each image opened as ImageFolder opens it (RGB) and put through the model's
    evaluation transform (timm's, from the model's data config), stacked into a batch."""

    inputs = "image files (paths) or PIL images"

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, items: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(items, (str, Path, Image.Image)):
            items = [items]

        def rgb(item: Any) -> Any:
            if isinstance(item, Image.Image):
                return item.convert("RGB")
            if isinstance(item, (str, Path)):
                with Image.open(item) as image:
                    return image.convert("RGB")
            raise TypeError(f"the image model takes {self.inputs}; got {type(item).__name__}")

        items = list(items)
        if not items:
            raise ValueError(f"the image model takes {self.inputs}; got none")
        return torch.stack([self.transform(rgb(item)) for item in items])


def _folder(data: Any, split: str, transform: Any, classes: list[str] | None = None) -> Any:
    from torchvision.datasets import ImageFolder

    allowed = "a folder with train/<class>/<images> and val/<class>/<images> (the same class folders in both)"
    if not isinstance(data, str):
        raise ConfigError("task.options.data", data, allowed, problem="not set" if data is None else "not a path")
    root = Path(data).expanduser() / split
    if not root.is_dir():
        raise ConfigError("task.options.data", data, allowed, problem=f"no folder {split}/ in it")
    try:
        folder = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, OSError) as err:  # an empty class folder, no class folders
        raise ConfigError("task.options.data", data, allowed, problem=f"{split}: {one_line(err)}") from None
    if classes is not None and folder.classes != classes:
        raise ConfigError("task.options.data", data, allowed,
                          problem=f"{split} has classes {folder.classes}, train {classes}")
    if len(folder.classes) < 2:
        raise ConfigError("task.options.data", data, allowed, problem=f"{split} has {len(folder.classes)} class")
    return folder


@takes_paths("data", "weights", words=("pretrained",))
def make_task(model: str = "resnet18", data: str | None = None, weights: str | None = None,
              trust_weights: bool = False, new_head: bool = True, image_size: int | None = None,
              augment: bool | Mapping[str, Any] = True, workers: int = 2) -> Task:
    for key, value in (("trust_weights", trust_weights), ("new_head", new_head)):
        check_option(key, value, isinstance(value, bool), "true or false")
    check_option("augment", augment, isinstance(augment, bool) or (
        isinstance(augment, Mapping) and set(augment) <= set(AUGMENT_KEYS)), _AUGMENT_ALLOWED)
    check_option("image_size", image_size, image_size is None or (type(image_size) is int and image_size >= 16),
                 "an integer >= 16, or null for the model's own input size")
    check_option("workers", workers, type(workers) is int and workers >= 0, "an integer >= 0")
    check_option("weights", weights, weights is None or isinstance(weights, str),
                 "a weights file, pretrained (downloads: needs the model hub), or null")
    library, _ = _library(model)
    from timm.data import create_transform

    train_set = _folder(data, "train", None)  # scanned once; its transform comes from the model below
    classes = train_set.classes
    state = read_state_dict(weights, trust_weights) if weights not in (None, "pretrained") else None
    probe = block_model(model, len(classes), weights, trust_weights, new_head, image_size, state)  # fails here
    _check_forward(probe, model, image_size)
    config = _data_config(probe.module, library, image_size)
    train_set.transform = _training_transform(config, augment)
    val_set = _folder(data, "val", create_transform(**config, is_training=False), classes)
    has_test = (Path(data).expanduser() / "test").is_dir()
    test_set = _folder(data, "test", create_transform(**config, is_training=False), classes) if has_test else None

    def build() -> BlockModel:  # a fresh model each time; its new head seeded by the trial (train.frozen_model)
        return block_model(model, len(classes), weights, trust_weights, new_head, image_size, state)

    plain_train = (_folder(data, "train", create_transform(**config, is_training=False), classes)
                   if augment is not False else None)
    return Task(name="image", build_model=build, metric="val_accuracy", train_data=train_set, val_data=val_set,
                test_data=test_set, probe_train_data=plain_train, loss=F.cross_entropy, classes=tuple(classes),
                preprocess=ImageInput(create_transform(**config, is_training=False)),
                evaluate=classification_metrics, augments=augment is not False,
                num_workers=workers, sources={split: str(Path(data).expanduser().resolve() / split)
                                              for split in ("train", "val", "test")})


# timm's create_transform training arguments a search space may set (augment: {hflip: 0.0, scale: [0.5, 1.0]})
AUGMENT_KEYS = ("scale", "ratio", "hflip", "vflip", "color_jitter", "auto_augment", "re_prob", "interpolation")
_AUGMENT_ALLOWED = ("true (timm's training transform), false (none), or a mapping of its arguments: "
                    + ", ".join(AUGMENT_KEYS))


def _training_transform(config: Mapping[str, Any], augment: bool | Mapping[str, Any]) -> Any:
    """timm's transform for training images: with ``augment`` a mapping, its arguments over timm's defaults."""
    from timm.data import create_transform

    given = {key: tuple(value) if isinstance(value, list) else value
             for key, value in (augment.items() if isinstance(augment, Mapping) else ())}
    try:  # a mapping, even {}, is timm's training transform with those arguments over the model's data config
        return create_transform(**{**config, **given}, is_training=augment is not False)
    except (TypeError, ValueError, KeyError, AssertionError) as err:  # a value timm cannot use
        raise ConfigError("task.options.augment", dict(given), _AUGMENT_ALLOWED, problem=one_line(err)) from None


def layers_model(options: Mapping[str, Any]) -> BlockModel:
    """The block model for ``run_search.py layers``: no data needed (1,000 classes, ImageNet's, unless the image
    folder is there: only the head's size depends on it)."""
    data = options.get("data")
    train = Path(str(data)).expanduser() / "train"
    classes = sum(1 for p in train.iterdir() if p.is_dir()) if isinstance(data, str) and train.is_dir() else 1000
    return block_model(options.get("model", "resnet18"), classes, options.get("weights"),
                       options.get("trust_weights") is True, image_size=options.get("image_size"))


def write_example(out: Path, per_class: int = 30, val_per_class: int = 30, size: int = 32, seed: int = 0) -> Path:
    """An image folder (``train/<digit>/*.png``, ``val/<digit>/*.png``) from scikit-learn's 1,797 UCI digits,
    upsampled to ``size`` pixels: a real, small data set to try the image task on, with no download."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    taken: dict[tuple[str, int], int] = {}
    for index in order.tolist():
        label = int(digits.target[index])
        for split, wanted in (("train", per_class), ("val", val_per_class)):
            if taken.get((split, label), 0) < wanted:
                taken[(split, label)] = taken.get((split, label), 0) + 1
                folder = out / split / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                pixels = (images[index, 0] * 255).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tune.tasks.image",
                                     description="Write an image folder of UCI digits to try the image task on.")
    parser.add_argument("command", choices=["example"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=30, help="training images per digit (default 30)")
    parser.add_argument("--val-per-class", type=int, default=30, help="validation images per digit (default 30)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    args = parser.parse_args()
    write_example(args.out, args.per_class, args.val_per_class, args.size)
    print(f"wrote {args.out}/train and {args.out}/val: 10 classes, {args.per_class} and {args.val_per_class} "
          f"images each, {args.size} px")


if __name__ == "__main__":
    main()
