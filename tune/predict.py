"""A recommended model taken home: the registered MLflow model with its class names and its preprocessing, predicting
labels from the inputs a user holds (image files, PIL images, strings, the digits' arrays).

A search logs its recommended model (``mlflow.pytorch``: a plain torch module, loadable without this package) and
beside it what the task knows of its inputs and outputs: the MLmodel file's ``metadata.freeze_search`` holds the
class names (``classes``), what the preprocessing takes (``inputs``) and the task's name; ``extra_files/`` holds
the preprocessing itself (``preprocess.pkl``: the task's ``preprocess``, pickled). ``load_model`` puts them together::

    import tune
    model = tune.load_model("models:/digits_freeze@recommended")
    model.predict(load_digits().images[:5])         # ['0', '1', '2', '3', '4']

Loading unpickles the model and its preprocessing: load only models you trust.
"""

from __future__ import annotations

import pickle
import sys
import sysconfig
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["METADATA_KEY", "PREPROCESS_FILE", "Predictor", "dump_preprocess", "load_model", "model_metadata",
           "pickled"]

METADATA_KEY = "freeze_search"  # the MLmodel file's metadata entry this package writes
PREPROCESS_FILE = "preprocess.pkl"


def model_metadata(task: Any, preprocessed: bool) -> dict[str, Any]:
    """What a logged model says of its task: its name, class names and what its preprocessing (logged beside it
    where ``preprocessed``) takes."""
    preprocess = getattr(task, "preprocess", None) if preprocessed else None
    classes = getattr(task, "classes", None)
    return {METADATA_KEY: {"task": task.name, "classes": list(classes) if classes is not None else None,
                           "inputs": _inputs(preprocess),
                           "preprocess": PREPROCESS_FILE if preprocess is not None else None}}


def _inputs(preprocess: Any) -> str:
    if preprocess is None:
        return "the model's own input batches"
    return getattr(preprocess, "inputs", None) or "what the task's preprocess takes"


def _own_module(obj: Any) -> types.ModuleType | None:
    """The module of a user's own code that defines ``obj`` (a file of theirs, not an installed package, the
    standard library or this package): it travels with the pickle, since where the model is loaded it may not be
    importable."""
    name = obj.__module__ if isinstance(obj, (types.FunctionType, type)) else type(obj).__module__
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if module is None or file is None or name == "__main__" or name.split(".")[0] == "tune":
        return None
    path = Path(file).resolve()
    installed = {"site-packages", "dist-packages"} & set(path.parts)
    stdlib = path.is_relative_to(Path(sysconfig.get_paths()["stdlib"]).resolve())
    return None if installed or stdlib else module


def pickled(preprocess: Callable[..., Any]) -> bytes:
    """A task's preprocessing as the model carries it: cloudpickle, a user's own module by value (a function or
    class of ``__main__`` is by value already)."""
    import cloudpickle

    module = _own_module(preprocess)
    if module is not None:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(preprocess)
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)


def dump_preprocess(preprocess: Callable[..., Any], path: Path) -> Path:
    path.write_bytes(pickled(preprocess))
    return path


@dataclass
class Predictor:
    """A trained model, its class names and its preprocessing. ``predict`` takes raw inputs (a list of them, or one)
    and returns their labels; without preprocessing, it takes the model's own input batch and, without class
    names, returns class indices."""

    module: nn.Module
    classes: tuple[str, ...] | None = None
    preprocess: Callable[[Sequence[Any]], Any] | None = None
    inputs: str = ""
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.module = self.module.to(self.device).eval()
        self.inputs = self.inputs or _inputs(self.preprocess)

    @torch.no_grad()
    def logits(self, raw: Any) -> torch.Tensor:
        """The model's outputs (one row per input) on ``raw``."""
        batch = self.preprocess(raw) if self.preprocess is not None else raw
        self.module.eval()
        if isinstance(batch, Mapping):
            output = self.module(**{key: value.to(self.device) for key, value in batch.items()})
        else:
            batch = torch.as_tensor(batch).to(self.device)
            weight = next(self.module.parameters(), None)
            if batch.is_floating_point() and weight is not None and batch.dtype != weight.dtype:
                batch = batch.to(weight.dtype)  # e.g. numpy's float64 for a float32 model
            output = self.module(batch)
        if not isinstance(output, torch.Tensor):  # a Hugging Face output holds its logits
            output = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            raise TypeError("the model's outputs are not one row of class scores per input (a detector's, a "
                            "sequence's?): call .module on its own batches")
        return output.float().cpu()

    def predict_proba(self, raw: Any) -> torch.Tensor:
        """The classes' probabilities (softmax over the outputs), one row per input."""
        return self.logits(raw).softmax(dim=-1)

    def predict(self, raw: Any) -> list[Any]:
        """The label of each input: its class name, or its class index where the model has no names."""
        if isinstance(raw, (list, tuple)) and not raw:
            return []
        indices = self.logits(raw).argmax(dim=-1).tolist()
        return [self.classes[i] for i in indices] if self.classes is not None else indices


def _download(model_uri: str, uri: str) -> Path:
    """The model's folder, fetched from the store at ``uri`` alone: a ``models:/`` URI (a registered version, an
    alias, a logged model's id) resolved by a client of that store, so that MLflow's global tracking and registry
    URIs (and the environment variables they set) are neither read nor changed."""
    import mlflow
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=uri))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    rest = model_uri.removeprefix("models:/").strip("/")
    if rest.startswith("m-"):
        model_id, source = rest, None
    else:
        name, at, alias = rest.partition("@")
        version = (client.get_model_version_by_alias(name, alias) if at
                   else client.get_model_version(*name.rsplit("/", 1)))
        model_id, source = version.model_id, version.source
        if not model_id and source.startswith("models:/m-"):  # a version of a logged model names it as its source
            model_id = source.removeprefix("models:/").strip("/")
    location = client.get_logged_model(model_id).artifact_location if model_id else source
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=uri))


def load_model(model_uri: str, *, tracking_uri: str | None = None, device: str | torch.device = "cpu"
               ) -> Predictor:
    """The model at ``model_uri`` (``models:/<name>@recommended``, ``SearchResult.model_uri``, a logged model's
    ``models:/m-...`` or a local folder) with its class names and preprocessing, on ``device``. ``tracking_uri``:
    the store (default: ``MLFLOW_TRACKING_URI``, else this folder's ``mlflow.db``, as the search's own)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import Model

    from tune.log import warn
    from tune.tracker.store import tracking_uri as resolve_uri

    if not Path(model_uri).expanduser().is_dir():
        local = _download(model_uri, resolve_uri(tracking_uri))
    else:
        local = Path(model_uri).expanduser()
    module = mlflow.pytorch.load_model(str(local), map_location=torch.device(device))  # its code paths on sys.path
    about = (Model.load(str(local)).metadata or {}).get(METADATA_KEY)
    if about is None:
        warn(f"{model_uri} holds no class names or preprocessing (not logged by a search of this package): predict "
             "takes the model's own input batches and returns class indices")
        about = {}
    preprocess = None
    if about.get("preprocess"):
        with open(local / "extra_files" / about["preprocess"], "rb") as file:
            preprocess = pickle.load(file)  # noqa: S301 - the model beside it is a pickle too: trusted models only
    classes = about.get("classes")
    return Predictor(module=module, classes=tuple(classes) if classes is not None else None, preprocess=preprocess,
                     inputs=about.get("inputs") or "", device=device)
