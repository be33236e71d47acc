"""The recommended model taken home (tune.predict): a model with its class names and preprocessing, saved as a
search logs it (an MLflow model with metadata and an extra file) and loaded back from its folder alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tune
from tune.predict import PREPROCESS_FILE, dump_preprocess, model_metadata


class Scale:
    """A preprocessing of the tests' own: lists of four numbers, halved."""

    inputs = "lists of four numbers"

    def __call__(self, items):
        return torch.tensor(items, dtype=torch.float32) / 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3)).eval()


def test_a_saved_model_predicts_names_from_raw_inputs_through_its_own_preprocessing(tmp_path):
    import mlflow.pytorch

    task = type("T", (), {"name": "mine", "classes": ("a", "b", "c"), "preprocess": Scale()})()
    module = _model()
    extra = dump_preprocess(task.preprocess, tmp_path / PREPROCESS_FILE)
    mlflow.pytorch.save_model(module, tmp_path / "model", metadata=model_metadata(task), extra_files=[str(extra)],
                              pip_requirements=["torch"], serialization_format="pickle")
    model = tune.load_model(str(tmp_path / "model"))
    raw = [[1.0, 2.0, 3.0, 4.0], [-4.0, 0.0, 8.0, 1.0]]
    expected = module(torch.tensor(raw) / 2).argmax(dim=1).tolist()
    assert model.predict(raw) == [("a", "b", "c")[i] for i in expected]
    assert model.classes == ("a", "b", "c") and model.inputs == "lists of four numbers"
    assert model.predict_proba(raw).shape == (2, 3)


def test_without_classes_or_preprocessing_it_takes_the_models_batches_and_returns_indices():
    module = _model()
    batch = torch.randn(5, 4)
    assert tune.Predictor(module).predict(batch) == module(batch).argmax(dim=1).tolist()


def test_outputs_that_are_not_class_scores_are_one_clear_error():
    with pytest.raises(TypeError, match="not one row of class scores per input"):
        tune.Predictor(nn.Flatten(0)).predict(torch.zeros(2, 3))
