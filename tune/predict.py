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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["METADATA_KEY", "PREPROCESS_FILE", "Predictor", "load_model", "model_metadata"]

METADATA_KEY = "freeze_search"  # the MLmodel file's metadata entry this package writes
PREPROCESS_FILE = "preprocess.pkl"


def model_metadata(task: Any) -> dict[str, Any]:
    """What a logged model says of its task: its name, class names and what its preprocessing takes."""
    preprocess = getattr(task, "preprocess", None)
    classes = getattr(task, "classes", None)
    return {METADATA_KEY: {"task": task.name, "classes": list(classes) if classes is not None else None,
                           "inputs": getattr(preprocess, "inputs", None) if preprocess is not None
                           else "the model's own input batches",
                           "preprocess": PREPROCESS_FILE if preprocess is not None else None}}


def dump_preprocess(preprocess: Callable[..., Any], path: Path) -> Path:
    """Pickle a task's preprocessing (cloudpickle: a function of the user's own module pickles by value)."""
    import cloudpickle

    path.write_bytes(cloudpickle.dumps(preprocess))
    return path


@dataclass
class Predictor:
    """A trained model, its class names and its preprocessing. ``predict`` takes raw inputs (a list of them, or one)
    and returns their labels; without preprocessing, it takes the model's own input batch and, without class
    names, returns class indices."""

    module: nn.Module
    classes: tuple[str, ...] | None = None
    preprocess: Callable[[Sequence[Any]], Any] | None = None
    inputs: str = "the model's own input batches"
    device: torch.device = torch.device("cpu")

    @torch.no_grad()
    def logits(self, raw: Any) -> torch.Tensor:
        """The model's outputs (one row per input) on ``raw``."""
        batch = self.preprocess(raw) if self.preprocess is not None else raw
        self.module.eval()
        if isinstance(batch, Mapping):
            output = self.module(**{key: value.to(self.device) for key, value in batch.items()})
        else:
            output = self.module(torch.as_tensor(batch).to(self.device))
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
        indices = self.logits(raw).argmax(dim=-1).tolist()
        return [self.classes[i] for i in indices] if self.classes is not None else indices


def load_model(model_uri: str, *, tracking_uri: str | None = None, device: str | torch.device = "cpu"
               ) -> Predictor:
    """The model at ``model_uri`` (``models:/<name>@recommended``, ``SearchResult.model_uri``, a logged model's
    ``models:/m-...`` or a local folder) with its class names and preprocessing, on ``device``. ``tracking_uri``:
    the store (default: ``MLFLOW_TRACKING_URI``, else this folder's ``mlflow.db``, as the search's own)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import Model

    from tune.checks import tracking_uri as resolve_uri

    if not Path(model_uri).expanduser().is_dir():
        mlflow.set_tracking_uri(resolve_uri(tracking_uri))
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    else:
        local = Path(model_uri).expanduser()
    device = torch.device(device)
    module = mlflow.pytorch.load_model(str(local), map_location=device)  # its code paths on sys.path from here
    about = (Model.load(str(local)).metadata or {}).get(METADATA_KEY, {})
    preprocess = None
    if about.get("preprocess"):
        with open(local / "extra_files" / about["preprocess"], "rb") as file:
            preprocess = pickle.load(file)  # noqa: S301 - the model beside it is a pickle too: trusted models only
    classes = about.get("classes")
    return Predictor(module=module, classes=tuple(classes) if classes is not None else None, preprocess=preprocess,
                     inputs=about.get("inputs") or Predictor.inputs, device=device)
