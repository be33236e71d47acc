"""The pre-flight (tune.driver.preflight): a user's task tried once in the driver before Ray and before any MLflow run;
each mistake one ConfigError naming the task's field, raised by tune.FreezeSearch's constructor."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_task, tiny_block_model
from torch.utils.data import Dataset

import tune
from tune.blocks import BlockModel

SPACE = {"name": "mine", "train": {"epochs": 2, "device": "cpu"},
         "space": {"freeze_stop": {"type": "int", "low": 0, "high": "all_but_head"}}}


def _refused(tmp_path, task) -> str:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(tune.ConfigError) as err:
        tune.FreezeSearch(SPACE, task=task, tracking_uri=uri, storage_path=tmp_path / "ray",
                          report_dir=tmp_path / "reports")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ray").exists()  # no run, no Ray folder
    assert "\n" not in str(err.value)
    return str(err.value)


def _tiny(**changes):
    return dataclasses.replace(make_tiny_task(), **changes)


def test_a_metric_evaluate_does_not_return_is_named_with_the_ones_it_does(tmp_path):
    assert _refused(tmp_path, lambda: _tiny(metric="accuracy")) == (
        "task.metric: got 'accuracy'; allowed: a name evaluate returns (val_accuracy, val_loss)")


def test_numpy_arrays_as_data_are_refused_naming_the_split(tmp_path):
    x, y = make_tiny_task().train_data
    message = _refused(tmp_path, lambda: _tiny(train_data=(x.numpy(), y.numpy())))
    assert message.startswith("task.train_data: got '(ndarray and ndarray)'; allowed: two torch tensors")


def test_inputs_the_model_cannot_take_name_the_model_the_error_and_the_batch(tmp_path):
    x, y = make_tiny_task().train_data
    wide = torch.zeros(len(x), 3, 8, 8)  # the model takes one channel
    message = _refused(tmp_path, lambda: _tiny(train_data=(wide, y)))
    assert message.startswith("task.model: got 'TinyNet' (RuntimeError: ")
    assert "inputs (8, 3, 8, 8) float32, targets (8,) int64)" in message
    assert message.endswith("allowed: a model that takes the task's training batches")


def test_float_labels_and_labels_beyond_the_classifier_are_refused(tmp_path):
    x, y = make_tiny_task().train_data
    assert _refused(tmp_path, lambda: _tiny(train_data=(x, y.float()))).startswith(
        "task.train_data: got 'labels of dtype torch.float32'; allowed: integer class labels")
    vx, vy = make_tiny_task().val_data
    assert _refused(tmp_path, lambda: _tiny(val_data=(vx, vy + 1))) == (
        "task.val_data: got 'labels 1..3'; allowed: class labels in [0, 2] (the model's classifier has 3 outputs)")


def test_a_loss_that_is_not_a_scalar_of_the_model_is_refused(tmp_path):
    assert _refused(tmp_path, lambda: _tiny(loss=lambda out, y: F.cross_entropy(out, y, reduction="none"))) \
        .startswith("task.loss: got 'a tensor of shape (8,)'")
    assert _refused(tmp_path, lambda: _tiny(loss=lambda out, y: torch.tensor(1.0))).startswith(
        "task.loss: got 'a tensor of shape ()' (it does not require grad)")


def test_an_evaluate_that_fails_or_returns_no_val_loss_is_named(tmp_path):
    def no_loss(model, x, y):
        return {"val_accuracy": 1.0}

    assert _refused(tmp_path, lambda: _tiny(evaluate=no_loss)) == (
        "task.evaluate: got 'metrics val_accuracy'; allowed: a mapping with the task's metric and val_loss")

    def broken(model, x, y):
        raise KeyError("labels")

    assert _refused(tmp_path, lambda: _tiny(evaluate=broken)).startswith(
        "task.evaluate: got 'broken' (KeyError: 'labels'); allowed:")


class _Pairs(Dataset):
    def __init__(self, fail: bool):
        self.x, self.y = make_tiny_task().train_data
        self.fail = fail

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        if self.fail:
            raise FileNotFoundError(f"images/{index}.png")
        return self.x[index], self.y[index]


def test_a_dataset_that_cannot_be_read_is_refused_and_one_that_can_passes(tmp_path):
    assert _refused(tmp_path, lambda: _tiny(train_data=_Pairs(fail=True))).startswith(
        "task.train_data: got '_Pairs' (FileNotFoundError: images/0.png)")
    tune.FreezeSearch(SPACE, task=lambda: _tiny(train_data=_Pairs(fail=False)),
                      tracking_uri=f"sqlite:///{tmp_path / 'ok.db'}", storage_path=tmp_path / "ray")


def test_a_model_given_as_the_task_is_refused_in_one_line(tmp_path):
    assert _refused(tmp_path, tiny_block_model().module).startswith(
        "task: got 'TinyNet(...)'; allowed: a tune.Task, or a function returning one")


def test_the_preflight_leaves_the_models_weights_and_statistics_as_they_were():
    from tune.driver.preflight import preflight

    task = make_tiny_task()
    block_model: BlockModel = task.build_model()
    before = {k: v.clone() for k, v in block_model.module.state_dict().items()}
    preflight(task, block_model, class_labels=True)
    after = block_model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in block_model.module.parameters())


def test_a_users_task_names_the_experiment_in_a_bundled_space_unless_a_name_is_given(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert tune.FreezeSearch("digits_freeze", task=make_tiny_task, tracking_uri=uri).config.name == "tiny"
    assert tune.FreezeSearch("digits_freeze", task=make_tiny_task, name="mine", tracking_uri=uri).config.name == "mine"
    assert tune.FreezeSearch("digits_freeze", overrides={"name": "other"}, tracking_uri=uri).config.name == "other"
    assert tune.FreezeSearch("digits_freeze", tracking_uri=uri).config.name == "digits_freeze"  # the space's own
    assert tune.FreezeSearch(SPACE, task=make_tiny_task, tracking_uri=uri).config.name == "mine"  # the user's space
    with pytest.raises(tune.ConfigError, match="^name: got 'a b'"):
        tune.FreezeSearch("digits_freeze", name="a b", tracking_uri=uri)


def test_class_names_must_match_the_classifier_and_the_preprocessing_must_pickle(tmp_path):
    """Both are logged with the recommended model after the search: a mistake in them is found before it."""
    import threading

    outputs = make_tiny_task().build_model().blocks[-1].out_features
    assert _refused(tmp_path, lambda: _tiny(classes=("cat", "dog", "bird")[: outputs - 1])) == (
        f"task.classes: got '{outputs - 1} names'; allowed: one name per output of the model's classifier "
        f"({outputs})")
    lock = threading.Lock()
    message = _refused(tmp_path, lambda: _tiny(preprocess=lambda items: (lock, items)[1]))
    assert message.startswith("task.preprocess: got 'function' (TypeError: ") and "pickles" in message
