"""The library as users call it: tune.FreezeSearch from Python (a space by name, a config as a mapping, a task as a
Python object), the console command from a wheel installed in a fresh venv, and the CLI as a client of the API."""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _phase, _runs
from mlflow.tracking import MlflowClient

import tune
from tune.api import _overrides
from tune.tracker import tracking

ROOT = Path(__file__).resolve().parents[1]



@contextlib.contextmanager
def tune_lines() -> Iterator[list[str]]:
    """What the ``tune`` logger says inside the block, collected in place of its handlers."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("tune")
    saved = logger.handlers[:]
    logger.handlers = [Collect()]
    try:
        yield lines
    finally:
        logger.handlers = saved

def test_the_cli_imports_only_the_public_api():
    """tune/cli.py is a thin client: it imports the exported API's own modules (``tune.api``, ``tune.errors``) and
    the standard library, nothing deeper, and uses only what ``tune`` exports."""
    tree = ast.parse((ROOT / "tune" / "cli.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module and node.module.startswith("tune")}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
                 if alias.name.startswith("tune")}
    assert imported == {"tune", "tune.errors"}, imported  # from tune import api; from tune.errors import ...
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "api"}
    assert used <= set(tune.api.__all__), used - set(tune.api.__all__)
    assert {name for name in used if not name.startswith("DEFAULT_")} <= set(tune.__all__)


def test_nothing_inside_the_package_imports_the_package_itself():
    """``import tune`` inside tune/ would be an import loop held together by its order; the package's folder is
    ``tune.tracker.provenance.PACKAGE_DIR``, the API's functions are ``tune.api``'s."""
    looped = [str(path.relative_to(ROOT)) for path in (ROOT / "tune").rglob("*.py")
              if any(isinstance(node, ast.Import) and any(alias.name == "tune" for alias in node.names)
                     for node in ast.walk(ast.parse(path.read_text())))]
    assert looped == []


def test_every_package_of_tune_is_in_the_wheel():
    """pyproject lists the packages by hand (the spaces are mapped in from search_spaces/): a new subpackage left
    off the list would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tune").rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"tune.search_spaces"}
    assert setuptools["package-dir"]["tune.search_spaces"] == "search_spaces"
    assert setuptools["package-data"]["tune.search_spaces"] == ["*.yaml"]


def test_bundled_spaces_are_found_by_name_and_an_unknown_name_lists_them():
    assert set(tune.spaces()) == {p.stem for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert tune.load_config("digits_freeze") == tune.load_config(ROOT / "search_spaces" / "digits_freeze.yaml")
    assert tune.load_config("digits_freeze.yaml").name == "digits_freeze"
    with pytest.raises(tune.ConfigError) as err:
        tune.load_config("digits_freez")
    assert str(err.value).startswith("path: got 'digits_freez'") and "digits_freeze" in str(err.value)


def test_overrides_as_a_mapping_as_strings_or_as_pairs_are_the_same():
    pairs = [("train.epochs", 5), ("space.lr", 0.001)]
    assert _overrides({"train.epochs": 5, "space.lr": 0.001}) == pairs
    assert _overrides(["train.epochs=5", "space.lr=0.001"]) == pairs
    assert _overrides(pairs) == pairs
    with pytest.raises(tune.ConfigError, match="^overrides: got 'train.epochs=5'"):
        _overrides("train.epochs=5")
    with pytest.raises(tune.ConfigError, match=r"^overrides.train: got \{'epochs': 5\}"):
        _overrides({"train": {"epochs": 5}})  # would replace the file's whole train section
    with pytest.raises(tune.ConfigError, match=r"^overrides: got \['train.epochs', 5\]"):
        _overrides([["train.epochs", 5]])


def test_bad_input_from_python_raises_before_any_run(tmp_path):
    """A config built in Python gets the file's checks: one ConfigError naming the key, no MLflow run, no Ray."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    space = {"name": "from_python", "space": {"freeze_stop": {"type": "int", "low": 0, "high": "all_but_head"}},
             "train": {"epochs": 0}}
    with pytest.raises(tune.ConfigError) as err:
        tune.FreezeSearch(space, tracking_uri=uri, storage_path=tmp_path / "ray", report_dir=tmp_path / "reports")
    assert str(err.value).startswith("train.epochs: got 0")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ray").exists()
    with pytest.raises(tune.ConfigError, match="^train.epochs: got 0"):
        tune.FreezeSearch("digits_freeze", overrides={"train.epochs": 0}, tracking_uri=uri)
    with pytest.raises(tune.ConfigError, match="^confirm: got '3'"):
        tune.FreezeSearch("digits_freeze", confirm="3", tracking_uri=uri)
    with pytest.raises(tune.ConfigError, match="^space: got None"):
        tune.FreezeSearch(None, tracking_uri=uri)
    with pytest.raises(tune.ConfigError, match="^overrides: got 'task.options.labels_per_class'"):
        tune.FreezeSearch("digits_freeze", task=lambda: None, overrides={"task.options.labels_per_class": 5})
    assert not (tmp_path / "m.db").exists()


def _logged_search(tmp_path: Path) -> str:
    """A finished search's runs written by hand into a sqlite store (no Ray, no training): two trials of two epochs
    scored on 18 validation examples; the store's URI."""
    from tune.reporting.records import search_tags
    from tune.tracker.datasets import DataSplit
    from tune.tracker.tracking import SearchTracker
    from tune.tracker.trial_runs import TrialRuns

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    splits = [DataSplit("train", "tiny-train", "in memory", "a", 36),
              DataSplit("val", "tiny-val", "in memory", "b", 18)]
    tracker = SearchTracker(uri, "by_hand", datasets=splits)
    tracker.start_search("search", {"name": "by_hand"}, search_tags(["freeze_stop"], [("score", "max")]))
    runs = TrialRuns(tracker, {"epochs": 2}, 2, searched=["freeze_stop"])
    for trial, stop, scores in (("t1", 0, [16 / 18, 17 / 18]), ("t2", 3, [12 / 18, 13 / 18])):
        params, tags = {"freeze_stop": stop}, {"phase": "search"}
        for epoch, score in enumerate(scores, start=1):
            runs.result(trial, params, tags, {"epoch": epoch, "score": score, "freeze_start": 0, "freeze_stop": stop,
                                              "trainable_params": 10, "frozen_params": 5, "frozen_flops_share": 0.1,
                                              "epoch_time_s": 1.0 - 0.2 * stop, "peak_mem_mb": 4.0 - stop},
                        first_since_restore=False)
        runs.complete(trial, params, tags)
    tracker.finish_search("FINISHED")
    return uri


def test_a_report_rebuilt_from_mlflow_says_how_many_validation_examples_scored_it(tmp_path):
    """The validation split's size is the parent run's validation dataset (its sample count), so ``freeze-search
    report`` says it as the search's own report did."""
    uri = _logged_search(tmp_path)
    result = tune.load_search("by_hand", tracking_uri=uri, report_dir=tmp_path / "reports")
    assert result.report.val_size == 18
    assert "Scored on 18 validation examples: too few to separate the tolerance (0.01)" in result.text


def test_loading_a_search_logs_nothing_unless_asked_and_the_report_command_prints_it(tmp_path, capsys):
    """``tune.load_search`` reads a search back quietly (as ``optuna.load_study`` does); ``verbose=True`` logs the
    report as the search did, and ``freeze-search report`` prints it."""
    import run_search

    uri = _logged_search(tmp_path)
    with tune_lines() as lines:
        result = tune.load_search("by_hand", tracking_uri=uri, report_dir=tmp_path / "reports")
        assert lines == [] and "Recommendation: freeze [0, 0)" in result.text
        assert (result.report_dir / "report.txt").is_file()  # written all the same
        tune.load_search("by_hand", tracking_uri=uri, report_dir=tmp_path / "reports", verbose=True)
        assert any(result.text in line for line in lines)
    capsys.readouterr()
    assert run_search.main(["report", "--experiment", "by_hand", "--tracking-uri", uri,
                            "--report-dir", str(tmp_path / "reports")]) == 0
    assert "Recommendation: freeze [0, 0)" in capsys.readouterr().out


def test_load_search_reads_the_search_back_as_the_api_result(default_smoke, tmp_path):
    """tune.load_search (freeze-search report's API): the search's trials, recommendation and model as MLflow holds
    them, in a SearchResult."""
    import tune
    from tune.tracker import tracking

    code, uri, _ = default_smoke
    parent, children = _runs(uri, "digits_freeze")  # as the search left it, before load_search reads it
    result = tune.load_search("digits_freeze", tracking_uri=uri, report_dir=tmp_path)
    assert result.status == "FINISHED" and result.parent_run_id == parent.info.run_id
    assert sorted(t.name for t in result.trials) == sorted(c.data.tags[tracking.TRIAL_ID_TAG]
                                                           for c in _phase(children, "search"))
    rec = result.recommendation
    assert rec.freeze_range == parent.data.tags["recommended_freeze_range"]
    assert rec.trial.name == parent.data.tags["recommended_trial"]
    assert rec.seeds == 2 and rec.interval[0] <= rec.score <= rec.interval[1]  # the race's 2 seeds
    assert rec.test_score == pytest.approx(parent.data.metrics["test_score"])
    assert result.model_uri == parent.data.tags["registered_model_version_uri"]
    assert set(rec.params) == {"freeze_stop", "lr"} and isinstance(rec.params["lr"], float)
    assert {t.name for t in result.frontier} <= {t.name for t in result.trials}
    assert (result.report_dir / "report.txt").read_text().strip() == result.text.strip()


@pytest.mark.parametrize("page", ["README.md", "docs/python-api.md"])
def test_the_python_example_shows_the_report_once(page, monkeypatch, capsys):
    """``run()`` logs the report through the ``tune`` logger, as the command prints it (the slow test below checks
    that a real run does): the documentation's example, run against a search that logs its report so, shows it once,
    not a second time by printing ``result.text``."""
    from test_report import record

    from tune.log import say
    from tune.reporting.report import build_report

    [block, *_] = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    built = build_report([record("a", 0, [0.9], 2.0, 8.0), record("b", 4, [0.895], 1.0, 3.0)], searched=["freeze_stop"],
                         objectives=[("score", "max")], tolerance=0.01, cost="epoch_time_s")

    class Logged:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def run(self) -> tune.SearchResult:
            say("\n" + built.text)  # as the search's own report goes out (tune.driver.study._write_report)
            return tune.SearchResult(status="FINISHED", parent_run_id="p", experiment="e", tracking_uri="u",
                                     report=built)

    class Model:  # the registered model the README's example loads: none here
        def predict(self, raw: list) -> list[str]:
            return ["0"] * len(raw)

    monkeypatch.setattr(tune, "FreezeSearch", Logged)
    monkeypatch.setattr(tune, "load_model", lambda uri: Model())
    exec(compile(block, page, "exec"), {})
    assert capsys.readouterr().out.count("Trials at their best epoch") == 1


@pytest.mark.parametrize("key", ["resume", "smoke_test", "verbose"])
def test_a_boolean_argument_is_a_bool_not_a_truthy_value(tmp_path, key):
    with pytest.raises(tune.ConfigError) as err:
        tune.FreezeSearch("digits_freeze", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                          storage_path=tmp_path / "ray", report_dir=tmp_path / "reports", **{key: "yes"})
    assert str(err.value) == f"{key}: got 'yes'; allowed: True or False"
    assert list(tmp_path.iterdir()) == []


def test_bad_input_from_python_names_the_argument_and_from_the_command_line_the_flag(tmp_path, capsys):
    import run_search

    uri, a_file, forbidden = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "a_file", "/proc/forbidden"
    a_file.write_text("")
    where = dict(tracking_uri=uri, storage_path=tmp_path / "ray", report_dir=tmp_path / "reports")
    python = {
        "confirm_top: got 0; allowed: an integer >= 1": lambda: tune.FreezeSearch(confirm_top=0, **where),
        "space: got 'nope.yaml' (no such file)": lambda: tune.FreezeSearch("nope.yaml", **where),
        "overrides: got 'epochs'; allowed: section.key=value": lambda: tune.FreezeSearch(overrides=["epochs"], **where),
        "overrides.train.epochs.x: got 1; allowed: a key inside a mapping": lambda: tune.FreezeSearch(
            overrides={"train.epochs.x": 1}, **where),
        "tracking_uri: got 'ftp://x/m' (unsupported scheme)": lambda: tune.FreezeSearch(tracking_uri="ftp://x/m"),
        f"report_dir: got '{a_file}'": lambda: tune.FreezeSearch(**{**where, "report_dir": a_file}),
        "storage_path: got '/proc/forbidden'": lambda: tune.FreezeSearch(**{**where, "storage_path": forbidden}),
        "resume: got 'digits_freeze' (no experiment": lambda: tune.FreezeSearch(resume=True, **where),
        "experiment: got 'digits_freeze' (no experiment": lambda: tune.load_search("digits_freeze", tracking_uri=uri),
        "run_id: got 'abc' (no run abc": lambda: tune.load_search(run_id="abc", tracking_uri=uri),
        "cost: got 'flops'": lambda: tune.load_search("x", cost="flops", tracking_uri=uri),
        "tolerance: got -1": lambda: tune.load_search("x", tolerance=-1, tracking_uri=uri),
        "space: got 'nope.yaml'": lambda: tune.layers("nope.yaml"),
        "path: got 'nope.yaml'": lambda: tune.load_config("nope.yaml"),
        f"project_dir: got '{tmp_path}'": lambda: tune.submit("http://127.0.0.1:1", project_dir=tmp_path),
    }
    for expected, call in python.items():
        with pytest.raises(tune.ConfigError) as err:
            call()
        assert str(err.value).startswith(expected), str(err.value)
    command_line = {
        "--confirm-top: got 0": ["--confirm-top", "0", "--tracking-uri", uri],
        "--resume: got 'digits_freeze'": ["--resume", "--tracking-uri", uri],
        "--experiment: got 'digits_freeze'": ["report", "--tracking-uri", uri],
        "--run-id: got 'abc'": ["report", "--run-id", "abc", "--tracking-uri", uri],
        "--cost: got 'flops'": ["report", "--cost", "flops", "--tracking-uri", uri],
        "--space: got 'nope.yaml'": ["layers", "--space", "nope.yaml"],
        "--set: got 'epochs'": ["layers", "--set", "epochs"],
        f"--project-dir: got '{tmp_path}'": ["submit", "--address", "http://127.0.0.1:1", "--project-dir",
                                             str(tmp_path)],
    }
    capsys.readouterr()  # MLflow's lines as it created the store
    for expected, args in command_line.items():
        assert run_search.main(args) == 2
        assert capsys.readouterr().err.startswith(f"error: {expected}"), args


@pytest.mark.parametrize(("where", "expected"), [
    ({"train": {"head_init": "probe"}}, "train.head_init: got 'probe'"),  # its default value, written all the same
    ({"train": {"head_init": "zero"}}, "train.head_init: got 'zero'"),
    ({"space": {"head_init": "probe"}}, "space.head_init: got 'probe'"),
    ({"space": {"head_lr_mult": 1.0}}, "space.head_lr_mult: got 1.0"),
])
def test_a_train_key_the_tasks_trainer_does_not_read_is_refused_wherever_it_is_written(tmp_path, where, expected):
    """The yolo task's refusals (its trainer has no classifier head to start or to give a learning rate), on a task
    that declares them as the yolo task does: Ultralytics is not needed to see them."""
    import dataclasses

    from conftest import make_tiny_task

    from tune.tasks.yolo import _IGNORED_TRAIN

    task = dataclasses.replace(make_tiny_task(), name="yolo", ignores=_IGNORED_TRAIN)
    space = {"name": "refusals", "train": dict(where.get("train", {})),
             "space": {"freeze_stop": {"type": "choice", "values": [0, 1]}, **where.get("space", {})}}
    with pytest.raises(tune.ConfigError) as err:
        tune.FreezeSearch(space, task=task, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                          storage_path=tmp_path / "ray", report_dir=tmp_path / "reports")
    key = expected.split(":")[0].split(".")[1]
    assert str(err.value) == (f"{expected}; allowed: the key left out with the yolo task (its trainer does not read "
                              f"it; instead: {_IGNORED_TRAIN[key]})")
    tune.FreezeSearch({**space, "train": {}, "space": {"freeze_stop": space["space"]["freeze_stop"]}}, task=task,
                      tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", storage_path=tmp_path / "ray",
                      report_dir=tmp_path / "reports")  # none written: the defaults are the task's business


@pytest.mark.slow
def test_a_search_from_python_returns_its_result_and_its_lines_go_to_the_callers_handler(ray_runtime, tmp_path,
                                                                                        capfd):
    """The README's API on the default space, in this process: the result holds what MLflow holds; the console
    lines go through the ``tune`` logger, so a caller's handler gets them and nothing is printed."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with tune_lines() as lines:
        search = tune.FreezeSearch("digits_freeze", overrides={"search.num_samples": 3}, smoke_test=True,
                                   tracking_uri=uri, storage_path=tmp_path / "ray", report_dir=tmp_path / "reports")
        assert search.config.search.num_samples == 3  # the caller's override wins over the smoke test's 4
        result = search.run()
    assert result.status == "FINISHED"
    parent = MlflowClient(tracking_uri=uri).get_run(result.parent_run_id)
    assert parent.data.tags["freeze_search.role"] == "search" and parent.info.status == "FINISHED"
    assert len(result.trials) == 3
    assert result.recommendation.freeze_range == parent.data.tags["recommended_freeze_range"]
    # a hard freeze's policy is its range
    assert result.recommendation.policy == parent.data.tags["recommended_policy"] == result.recommendation.freeze_range
    assert result.model_uri == parent.data.tags["registered_model_version_uri"]
    assert (result.report_dir / "report.txt").is_file() and result.report_dir.parent == tmp_path / "reports"
    said = "\n".join(lines)
    assert f"MLflow parent run {result.parent_run_id}" in said and result.text in said
    printed = capfd.readouterr()
    assert "MLflow parent run" not in printed.out + printed.err and "trial" not in printed.out


USER_SCRIPT = '''
import sys

import torch
import torch.nn.functional as F
from torch import nn

import tune
from tune.blocks import BlockModel
from tune.tasks.base import Task, classification_metrics


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Sequential(nn.ReLU(), nn.Flatten()),
                                    nn.Linear(64, 16), nn.Linear(16, 3))

    def forward(self, x):
        return self.blocks(x)


def build():
    net = Net()
    net.load_state_dict(torch.load("pretrained.pt", weights_only=True))  # relative: the user's working directory
    return BlockModel(module=net, blocks=list(net.blocks), block_names=["conv", "flat", "neck", "head"],
                      cut_points={"backbone": 3}, example_input=torch.zeros(2, 1, 4, 4), sequential=True)


def make_task():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = 0.1 * torch.randn(60, 1, 4, 4, generator=g)
    x[torch.arange(60), 0, y, 0] += 1.0
    return Task(name="mine", build_model=build, train_data=(x[:36], y[:36]), val_data=(x[36:], y[36:]),
                metric="val_accuracy", loss=F.cross_entropy, evaluate=classification_metrics)


torch.manual_seed(0)
torch.save(Net().state_dict(), "pretrained.pt")
space = {"name": "my_task", "train": {"epochs": 2, "device": "cpu"},
         "space": {"freeze_stop": {"type": "choice", "values": [0, 1, "backbone"]}},
         "search": {"algorithm": "grid"}, "report": {"confirm_seeds": 0}}
result = tune.FreezeSearch(space, task=make_task, tracking_uri=sys.argv[1]).run()
print("RESULT", result.status, len(result.trials), result.recommendation.freeze_range)
'''


@pytest.mark.slow
def test_a_task_given_as_a_python_object_in_a_users_script_trains_in_every_trial(tmp_path):
    """A user's own model and data, no import path: a function defined in the user's script (``__main__``) that
    Ray pickles into each trial; the config a mapping built in Python. Its model loads a file by a relative path,
    which each trial finds as the driver does (Ray Tune would run it in the trial's own folder)."""
    (tmp_path / "mine.py").write_text(USER_SCRIPT)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "mine.py", uri], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    status, trials, freeze_range = result.stdout.split("RESULT ")[1].split(maxsplit=2)
    assert (status, trials) == ("FINISHED", "3")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("my_task")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("freeze_search.role") == "search")
    assert parent.data.params["task.name"] == "__main__:make_task" and parent.data.tags["space_file"] == "<python>"
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert sorted(r.data.params["freeze_stop"] for r in children) == ["0", "1", "3"]  # backbone: block 3
    assert all(r.info.status == "FINISHED" and "score" in r.data.metrics for r in children)
    assert freeze_range.strip() == parent.data.tags["recommended_freeze_range"]
    artifacts = [f.path for f in client.list_artifacts(parent.info.run_id)]
    assert "space.yaml" in artifacts  # the config as the search ran it, kept on the parent run


@pytest.mark.slow
def test_the_wheel_installs_the_command_and_its_spaces_and_runs_the_default(tmp_path):
    """``pip install`` of the built wheel (not editable) into a fresh venv gives ``freeze-search``, which runs the
    default space with no checkout in sight. The dependencies come from this venv (a .pth line: the registries'
    torch would take minutes and gigabytes here); the package itself only from the wheel."""
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "tune", "search_spaces"):  # a copy: no build/ left in the checkout
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, source / part, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                             if (ROOT / part).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed_dependencies.pth").write_text(ours + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(next(wheels.glob("*.whl")))], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    where = subprocess.run([str(python), "-c", "import tune; print(tune.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(site), where  # the wheel's copy, not the checkout
    result = subprocess.run([str(venv / "bin" / "freeze-search"), "--smoke-test", "--tracking-uri",
                             f"sqlite:///{work / 'm.db'}"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    assert "search digits_freeze:" in result.stdout and "Recommendation" in result.stdout
    parent = MlflowClient(tracking_uri=f"sqlite:///{work / 'm.db'}").search_runs(
        [MlflowClient(tracking_uri=f"sqlite:///{work / 'm.db'}").get_experiment_by_name("digits_freeze")
         .experiment_id], filter_string="tags.`freeze_search.role` = 'search'")[0]
    assert parent.data.tags["space_file"] == str(Path(site) / "tune" / "search_spaces" / "digits_freeze.yaml")
    layers = subprocess.run([str(venv / "bin" / "freeze-search"), "layers"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert layers.returncode == 0 and "backbone" in layers.stdout, layers.stderr[-2000:]


def test_a_submitted_search_is_typed_and_its_jobs_command_line_reads_back_as_the_same_search(tmp_path):
    """``tune.submit`` takes FreezeSearch's arguments, not a command line; the job's command line, built from
    them, parses back (the CLI's own parser) to the very same options, values typed as they were given."""
    from tune.api import _options
    from tune.cli import parse_args, search_kwargs
    from tune.driver.cluster import job_arguments

    overrides = {"train.lr": 1e-05, "space.freeze_stop": {"type": "int", "low": 0, "high": "all_but_head"},
                 "train.head_init": "probe", "task.options.weights": None, "search.num_samples": 3,
                 "train.label_smoothing": 0.1, "name": "my search", "train.device": "yes"}
    options = _options("search_spaces/digits_freeze.yaml", overrides=overrides, tracking_uri="http://127.0.0.1:5000",
                       storage_path=str(tmp_path), report_dir=None, confirm=3, confirm_top=None, resume=False,
                       smoke_test=True, verbose=False)
    argv = job_arguments(options, "search_spaces/digits_freeze.yaml")
    kwargs = search_kwargs(parse_args(argv))
    del kwargs["address"]
    again = _options(**kwargs)
    assert again == options
    assert dict(again.overrides)["train.device"] == "yes" and dict(again.overrides)["train.lr"] == 1e-05
    with pytest.raises(tune.ConfigError) as err:  # typed: checked as FreezeSearch checks it, before any job
        tune.submit("http://127.0.0.1:1", confirm="3", tracking_uri="http://127.0.0.1:5000", storage_path=tmp_path)
    assert str(err.value) == ("confirm: got '3' (str); allowed: 0 (no confirmation) or an integer >= 2 "
                              "(seeds per candidate)")
