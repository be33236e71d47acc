"""The ``yolo`` task: object detection with Ultralytics YOLO (the YOLOv5 guide's case). Optional extra:
``pip install -e ".[yolo]"`` (Ultralytics needs torchvision: torch==2.14.1 torchvision==0.29.1 on these machines).

Options (``task.options`` in a space file)::

    data: path/to/dataset.yaml   # an Ultralytics dataset yaml whose images are on disk (required; nothing downloads)
    model: yolov5nu.yaml         # a model yaml bundled with Ultralytics or a path (yolov5mu.yaml = the guide's v5m)
    weights: null                # pretrained weights: a state_dict file (loaded with weights_only=True), or
                                 # Ultralytics' own checkpoint (yolov5mu.pt) with trust_weights: true
    trust_weights: false         # true: load a pickled checkpoint (Ultralytics' .pt runs code when loaded)
    imgsz: 640                   # training and validation image size
    workers: 2                   # dataloader workers per trial
    hyp: {}                      # other Ultralytics train arguments, fixed (lrf, warmup_epochs, mosaic...)

Freezing keeps YOLOv5's meaning exactly: the blocks are ``model.model[i]``, whose parameters are named
``model.{i}.*``, so ``freeze: 10`` freezes every parameter named ``model.0.`` to ``model.9.``; ``backbone`` is the
length of the model yaml's backbone (10 for YOLOv5) and ``all_but_head`` everything but Detect (24 for YOLOv5).
Trials train with Ultralytics' own DetectionTrainer, with four differences (:class:`YoloTrial`,
tune/tasks/yolo_trial.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tune.blocks import BlockModel
from tune.errors import ConfigError, one_line
from tune.tasks.base import Task, takes_paths
from tune.tasks.weights import load_fitting, read_state_dict
from tune.tasks.yolo_offline import check_data, dataset_root, offline_copy, offline_hooks, ultralytics_offline
from tune.tasks.yolo_trial import YoloTrial, _box_metrics, _device_arg

__all__ = ["METRICS", "YoloTrial", "block_model", "layers_model", "make_task", "score_split"]

# Reported each epoch beside tune.training.trial.METRIC_KEYS: score is mAP50-95.
METRICS = ("mAP50", "mAP50-95", "precision", "recall", "box_loss", "cls_loss", "dfl_loss", "val_box_loss",
           "val_cls_loss", "val_dfl_loss", "gpu_util_pct")

# Ultralytics train arguments that come from the search's own keys (train:/space:), not from ``hyp``.
_OWN_KEYS = {"lr0": "lr", "momentum": "momentum", "weight_decay": "weight_decay", "epochs": "epochs",
             "batch": "batch_size", "optimizer": "optimizer", "freeze": "freeze", "seed": "seed", "device": "device"}
# Ones this task sets itself: where the trial runs and what it writes.
_FIXED_KEYS = {"model", "data", "imgsz", "workers", "project", "name", "exist_ok", "save", "plots", "val", "resume",
               "pretrained", "verbose", "mode", "task", "time", "save_period", "cache"}
# Ones that would change the model the task built and froze (its classes, its modules, its parameter names).
_REFUSED_KEYS = {"single_cls", "classes", "compile", "distill_model", "quantize"}
# train keys Ultralytics' trainer has its own form of: the search's form would be ignored (Task.ignores).
_IGNORED_TRAIN = {"lr_schedule": "task.options.hyp.lrf (Ultralytics decays lr0 linearly to lr0 * lrf; "
                                 "cos_lr: true for a cosine)",
                  "warmup": "task.options.hyp.warmup_epochs (Ultralytics' warmup, in epochs)",
                  "frozen_dropout": "nothing (the YOLO models have no dropout)",
                  "prefix_cache": "nothing (the frozen prefix is never cached: the inputs are augmented)",
                  "prefix_cache_max_mb": "nothing (the frozen prefix is never cached: the inputs are augmented)",
                  "head_init": "nothing (the Detect head is no classifier: no linear probe fits it; Ultralytics "
                               "initialises its biases from priors)",
                  "head_lr_mult": "nothing (Ultralytics' trainer gives every layer lr0)",
                  "precision": "task.options.hyp.amp (Ultralytics' own mixed precision, on CUDA)",
                  "channels_last": "nothing (Ultralytics' trainer keeps the default memory layout)",
                  "layer_decay": "nothing (Ultralytics' trainer gives every layer lr0)",
                  "unfreeze_epoch": "nothing (Ultralytics' trainer freezes once, before the first epoch)",
                  "unfreeze_every": "nothing (Ultralytics' trainer freezes once, before the first epoch)"}


def _check_hyp(hyp: Any) -> dict[str, Any]:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if hyp is None:
        return {}
    if not isinstance(hyp, Mapping):
        raise ConfigError("task.options.hyp", hyp, "a mapping of Ultralytics train arguments")
    for key, value in hyp.items():
        if key in _OWN_KEYS:
            raise ConfigError(f"task.options.hyp.{key}", value, f"train.{_OWN_KEYS[key]} or space.{_OWN_KEYS[key]}",
                              problem="set by the search's own key")
        if key in _FIXED_KEYS or key in _REFUSED_KEYS or key not in DEFAULT_CFG_DICT:
            problem = ("unknown key" if key not in DEFAULT_CFG_DICT else "set by the yolo task" if key in _FIXED_KEYS
                       else "it would change the model the task built and froze")
            raise ConfigError(f"task.options.hyp.{key}", value, "an Ultralytics train argument such as lrf, "
                              "warmup_epochs, box, cls, dfl, hsv_h, degrees, mosaic, mixup, close_mosaic, amp",
                              problem=problem)
    from ultralytics.cfg import get_cfg

    for key, value in hyp.items():  # Ultralytics' own type and range checks, one key at a time
        try:
            get_cfg(overrides={key: value})
        except (TypeError, ValueError, SyntaxError) as err:
            raise ConfigError(f"task.options.hyp.{key}", value, "a value Ultralytics accepts for it",
                              problem=one_line(err)) from None
    return dict(hyp)


def _load_weights(module: torch.nn.Module, weights: str, trust: bool = False) -> None:
    """Load pretrained weights, as YOLOv5 does: every tensor whose name and shape match; the Detect head's class
    outputs are left as built when the data set has another number of classes (COCO's 80 to VOC's 20). Anything
    else that does not fit is refused. Ultralytics' own checkpoint (a pickle) loads with ``trust``."""
    state = read_state_dict(weights, trust, "a state_dict file of this model (torch.save(model.state_dict())), or "
                                            "an Ultralytics checkpoint (yolov5mu.pt, a pickle)")
    head = f"model.{len(module.model) - 1}."
    load_fitting(module, state, weights, lambda name: name.startswith(head))


def block_model(model: str, nc: int, imgsz: int, weights: str | None = None, trust_weights: bool = False
                ) -> BlockModel:
    """A YOLO DetectionModel as blocks: ``model.model[i]`` (parameters ``model.{i}.*``), the backbone's end from
    the model yaml. FLOP shares are measured at ``min(imgsz, 256)``: every block is convolutional, so the shares
    barely depend on the size."""
    ultralytics_offline()
    from ultralytics.nn.tasks import DetectionModel

    try:
        module = DetectionModel(cfg=model, nc=nc, verbose=False)
    except (FileNotFoundError, KeyError, ValueError, AssertionError) as err:
        raise ConfigError("task.options.model", model, "a YOLO detection model yaml, e.g. yolov5nu.yaml",
                          problem=f"{type(err).__name__}: {err}") from None
    if weights is not None:
        _load_weights(module, weights, trust_weights)
    layers = list(module.model)
    backbone = len(module.yaml.get("backbone", []))
    size = max(32, min(int(imgsz), 256) // 32 * 32)
    return BlockModel(module=module, blocks=layers, block_names=[f"model.{i}" for i in range(len(layers))],
                      cut_points={"backbone": backbone} if 0 < backbone < len(layers) else {},
                      example_input=torch.zeros(1, 3, size, size), sequential=False)


def layers_model(options: Mapping[str, Any]) -> BlockModel:
    """The block model for ``run_search.py layers``: no data needed (80 classes, COCO's, unless the dataset yaml
    is on disk: only the Detect head's size depends on it)."""
    ultralytics_offline()
    data = options.get("data")
    nc = len(check_data(data)[1]["names"]) if isinstance(data, str) and Path(data).expanduser().exists() else 80
    return block_model(options.get("model", "yolov5nu.yaml"), nc, int(options.get("imgsz", 640)),
                       options.get("weights"), options.get("trust_weights") is True)


@takes_paths("data", "model", "weights")
def make_task(data: str | None = None, model: str = "yolov5nu.yaml", weights: str | None = None, imgsz: int = 640,
              workers: int = 2, hyp: Mapping[str, Any] | None = None, trust_weights: bool = False) -> Task:
    ultralytics_offline()
    data_path, raw = check_data(data)
    names = raw["names"]
    nc = len(names)
    if not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz < 32:
        raise ConfigError("task.options.imgsz", imgsz, "an integer >= 32 (a multiple of 32)")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ConfigError("task.options.workers", workers, "an integer >= 0")
    if not isinstance(trust_weights, bool):
        raise ConfigError("task.options.trust_weights", trust_weights, "true or false")
    options = {"data": data_path, "data_raw": raw, "model": model, "imgsz": imgsz, "workers": workers,
               "hyp": _check_hyp(hyp)}
    block_model(model, nc, imgsz, weights, trust_weights)  # bad model or weights: fail here, before any trial

    def build() -> BlockModel:  # a fresh model each time, its new layers seeded by the trial (train.frozen_model)
        return block_model(model, nc, imgsz, weights, trust_weights)

    root = dataset_root(data_path, raw)
    sources = {split: str(root / str(raw[split] if not isinstance(raw[split], list) else raw[split][0]))
               for split in ("train", "val", "test") if raw.get(split)}
    labels = {split: [path] for split, source in sources.items() if (path := _labels_of(source))}

    def score_test(module: torch.nn.Module, device: torch.device) -> dict[str, float]:
        return score_split(module, options, "test", device)

    return Task(name="yolo", build_model=build, metric="mAP50-95", augments=True,
                make_trial=lambda task, cfg, device=None: YoloTrial(task, cfg, options, device),
                extra_metrics=METRICS, sources=sources, score_test=score_test if raw.get("test") else None,
                ignores=_IGNORED_TRAIN, also_digested=labels)


def _labels_of(images: str) -> str | None:
    """The labels folder of an images folder, by Ultralytics' rule (the last ``images`` in the path becomes
    ``labels``), where it is on disk."""
    parts = Path(images).parts
    if "images" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("images")
    labels = Path(*parts[:at], "labels", *parts[at + 1:])
    return str(labels) if labels.exists() else None


def score_split(module: torch.nn.Module, options: Mapping[str, Any], split: str, device: torch.device
                ) -> dict[str, float]:
    """A model's mAP50-95, mAP50, precision and recall on one split of the dataset yaml, by Ultralytics' own
    validator (as a trial validates each epoch; the test split scored after the search: Task.score_test)."""
    from ultralytics.models.yolo.detect import DetectionValidator

    with tempfile.TemporaryDirectory(prefix="freeze-yolo-test-") as workdir, offline_hooks():
        # rect: letterboxed as a trial's own validation and Ultralytics' model.val() do (the same mAP, to the 5 decimals
        # the trainer rounds its figures to)
        args = {"data": offline_copy(options["data"], options["data_raw"], Path(workdir)), "split": split,
                "imgsz": options["imgsz"], "batch": 16, "device": _device_arg(device), "workers": options["workers"],
                "rect": True, "plots": False, "save_json": False, "verbose": False, "project": workdir, "name": split}
        return _box_metrics(DetectionValidator(args=args)(model=module))
