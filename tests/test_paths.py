"""Task options that name local files and folders reach trials, which Ray Tune runs in folders of their own: each task
declares its path options (``takes_paths``), and the driver makes every one that exists absolute, bare names too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.settings.config import TaskConfig
from tune.tasks import absolute_paths


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """A working directory holding what a user names by bare words: a model folder, a data folder, weights files."""
    for folder in ("my_bert", "flowers", "pretrained", "coco8"):
        (tmp_path / folder).mkdir()
    for file in ("weights", "train.csv", "my_yolo.yaml", "w.pt"):
        (tmp_path / file).write_bytes(b"")
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "data.pt").write_bytes(b"")
    return tmp_path


def _resolved(task: str, options: dict, base: Path) -> dict:
    return absolute_paths(TaskConfig(task, options), base).options


@pytest.mark.parametrize(("task", "options", "paths"), [
    ("text", {"model": "my_bert", "data": "train.csv", "val_data": "flowers", "test_data": "absent.csv",
              "text_column": "weights", "label_column": "label"}, {"model", "data", "val_data"}),
    ("image", {"model": "resnet18", "data": "flowers", "weights": "weights"}, {"data", "weights"}),
    ("yolo", {"data": "coco8", "model": "my_yolo.yaml", "weights": "weights", "hyp": {"optimizer": "SGD"}},
     {"data", "model", "weights"}),
    ("digits", {"weights": "weights"}, {"weights"}),
    ("conftest:make_declared_file_task", {"source": "weights"}, {"source"}),
])
def test_a_declared_path_option_that_exists_is_that_path_even_as_a_bare_name(here, task, options, paths):
    got = _resolved(task, options, here)
    assert got == {key: str(here / value) if key in paths else value for key, value in options.items()}
    # the same options from another folder, where none of them exists: every one stays as written (a hub name)
    assert _resolved(task, options, here / "inputs") == options


@pytest.mark.parametrize("task", ["image", "digits"])
def test_a_tasks_keyword_stays_a_word_where_a_folder_has_its_name(here, task):
    assert _resolved(task, {"weights": "pretrained"}, here) == {"weights": "pretrained"}


def test_a_task_that_declares_nothing_keeps_the_path_shape_rule_and_its_data_options_are_paths(here):
    options = {"data": "inputs/data.pt", "other": "w.pt", "word": "weights", "missing": "nope/x.pt", "n": 3,
               "shards": ["w.pt", "nope/y.pt", "word"],
               "hyp": {"cfg": "inputs/data.pt", "optimizer": "SGD", "nested": [{"file": "w.pt"}]}}
    got = _resolved("conftest:make_file_task", options, here)
    assert _resolved("conftest:make_file_task", {"data": "flowers", "val_data": "coco8", "word": "flowers"},
                     here) == {"data": str(here / "flowers"), "val_data": str(here / "coco8"), "word": "flowers"}
    assert got == {**options, "data": str(here / "inputs" / "data.pt"), "other": str(here / "w.pt"),
                   "shards": [str(here / "w.pt"), "nope/y.pt", "word"],
                   "hyp": {"cfg": str(here / "inputs" / "data.pt"), "optimizer": "SGD",
                           "nested": [{"file": str(here / "w.pt")}]}}


def test_an_absolute_path_is_left_as_written(here):
    assert _resolved("text", {"model": str(here / "my_bert")}, Path("/")) == {"model": str(here / "my_bert")}
