"""The recommended model taken home (tune.predict): a model with its class names and preprocessing, saved as a
search logs it (an MLflow model with metadata and an extra file) and loaded back from its folder alone."""

from __future__ import annotations

import numpy as np
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
    mlflow.pytorch.save_model(module, tmp_path / "model", metadata=model_metadata(task, True), extra_files=[str(extra)],
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


def test_a_users_own_preprocessing_travels_by_value_and_loads_where_its_module_is_not(tmp_path):
    """A preprocessing defined in the user's own file is pickled with its code: loaded in a process where that file
    is not importable, it still runs."""
    import subprocess
    import sys

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "myprep.py").write_text(
        "import torch\n\nclass Double:\n    inputs = 'numbers'\n\n"
        "    def __call__(self, items):\n        return torch.tensor(items, dtype=torch.float32) * 2\n")
    sys.path.insert(0, str(tmp_path / "mine"))
    try:
        import myprep

        blob = tmp_path / PREPROCESS_FILE
        dump_preprocess(myprep.Double(), blob)
    finally:
        sys.path.remove(str(tmp_path / "mine"))
        sys.modules.pop("myprep", None)
    code = ("import pickle, sys; p = pickle.load(open(sys.argv[1], 'rb')); "
            "print(p([1.5]).tolist(), p.inputs, 'myprep' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(blob)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.split() == ["[3.0]", "numbers", "False"]


def test_digits_arrays_of_another_shape_are_refused_not_cut_into_digits():
    from tune.tasks.digits import DigitsInput

    preprocess = DigitsInput()
    assert preprocess(np.zeros((3, 8, 8))).shape == (3, 1, 16, 16) and preprocess(np.zeros(64)).shape[0] == 1
    for shape in [(16, 16), (8, 8, 3), (2, 32), (0, 8, 8)]:
        with pytest.raises(ValueError, match="8x8 images"):
            preprocess(np.zeros(shape))
