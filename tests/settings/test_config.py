"""Search space files: strict keys, one-line errors naming key, value and what is allowed; the space
vocabulary and its translation to Optuna."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tune.errors import ConfigError
from tune.settings.config import TrainConfig, build_config
from tune.settings.loading import load_config, parse_overrides
from tune.settings.space import Choice, FloatRange, IntRange, OptunaSpace
from tune.training.space_freezes import check_space

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPACE = ROOT / "search_spaces" / "digits_freeze.yaml"


def minimal(**sections):
    raw = {"name": "t", "space": {"freeze_stop": {"type": "int", "low": 0, "high": 2}}}
    raw.update(sections)
    return raw


def test_default_space_loads_with_names_unresolved_until_the_model_is_known():
    cfg = load_config(DEFAULT_SPACE)
    assert cfg.name == "digits_freeze"
    assert cfg.space["freeze_stop"] == IntRange("none", "all_but_head")
    assert cfg.space["lr"] == FloatRange(3e-4, 3e-3, log=True)
    assert cfg.search.scheduler_name == "asha" and cfg.search.num_samples >= 16


def test_overrides_reach_every_section_and_a_plain_space_value_fixes_the_parameter():
    cfg = load_config(DEFAULT_SPACE, parse_overrides(["train.epochs=3", "space.lr=0.005", "search.num_samples=2",
                                                      "task.options.labels_per_class=5"]))
    assert cfg.train.epochs == 3 and cfg.search.num_samples == 2
    assert "lr" not in cfg.space and cfg.train.lr == 0.005
    assert cfg.task.options["labels_per_class"] == 5


@pytest.mark.parametrize(("raw", "key", "value"), [
    ({"name": "t", "bogus": 1}, "bogus", "1"),
    (minimal(name="has space"), "name", "'has space'"),
    (minimal(train={"epochs": "ten"}), "train.epochs", "'ten'"),
    (minimal(train={"epochs": True}), "train.epochs", "True"),
    (minimal(train={"epochs": 0}), "train.epochs", "0"),
    (minimal(train={"lr": -1.0}), "train.lr", "-1.0"),
    (minimal(train={"learning_rate": 0.1}), "train.learning_rate", "0.1"),
    (minimal(train={"optimizer": "lion"}), "train.optimizer", "'lion'"),
    (minimal(train={"frozen_bn": "frozen"}), "train.frozen_bn", "'frozen'"),
    (minimal(train={"freeze": 1.5}), "train.freeze", "1.5"),
    (minimal(train={"device": "tpu"}), "train.device", "'tpu'"),
    (minimal(search={"num_samples": 0}), "search.num_samples", "0"),
    (minimal(search={"scheduler": "pbt"}), "search.scheduler", "'pbt'"),
    (minimal(search={"cpus_per_trial": 0}), "search.cpus_per_trial", "0"),
    (minimal(search={"grace_period": 20}), "search.grace_period", "20"),
    (minimal(search={"objectives": {"score": "maximise"}}), "search.objectives", "{'score': 'maximise'}"),
    (minimal(search={"objectives": {"score": "max", "peak_mem_mb": "min"}, "scheduler": "asha"}), "search.scheduler",
     "'asha'"),
    (minimal(search={"time_budget_s": -5}), "search.time_budget_s", "-5"),
    (minimal(search={"freeze_aware_gpus": True}), "search.freeze_aware_gpus", "True"),
    (minimal(report={"tolerance": -0.1}), "report.tolerance", "-0.1"),
    (minimal(report={"cost": "flops"}), "report.cost", "'flops'"),
    (minimal(space={}), "space", "{}"),
    (minimal(space={"lr": {"type": "float", "low": 0.1, "high": 0.01}}), "space.lr", "{'low': 0.1, 'high': 0.01}"),
    (minimal(space={"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}), "space.lr.low", "0.0"),
    (minimal(space={"lr": {"type": "normal", "low": 0.0, "high": 0.1}}), "space.lr.type", "'normal'"),
    (minimal(space={"lr": {"type": "float", "low": 0.1}}), "space.lr.high", "None"),
    (minimal(space={"lr": {"type": "float", "low": 0.1, "high": 0.2, "q": 2}}), "space.lr.q", "2"),
    (minimal(space={"freeze_stop": {"type": "int", "low": 0.5, "high": 3}}), "space.freeze_stop.low", "0.5"),
    (minimal(space={"freeze_stop": {"type": "int", "low": 3, "high": 1}}), "space.freeze_stop",
     "{'low': 3, 'high': 1}"),
    (minimal(space={"freeze_stop": {"type": "choice", "values": []}}), "space.freeze_stop.values", "[]"),
    (minimal(space={"freeze": {"type": "choice", "values": [[0, 1]]}}), "space.freeze.values[0]", "[0, 1]"),
    (minimal(space={"device": {"type": "choice", "values": ["cpu"]}}), "space.device", "{'type': 'choice'"),
    (minimal(task={"name": "digits", "opts": {}}), "task.opts", "{}"),
    (minimal(space={"batch_size": {"type": "int", "low": 0, "high": 4}}), "space.batch_size.low", "0"),
    (minimal(space={"optimizer": {"type": "choice", "values": ["adam", "bogus"]}}), "space.optimizer.values[1]",
     "'bogus'"),
    (minimal(space={"epochs": {"type": "float", "low": 1, "high": 4}}), "space.epochs.type", "'float'"),
    (minimal(train={"freeze": 3}), "train.freeze", "3"),  # with a searched freeze_stop: ambiguous
])
def test_each_bad_value_is_one_line_naming_key_value_and_allowed(raw, key, value):
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    message = str(caught.value)
    assert message.startswith(f"{key}: got {value}"), message
    assert "; allowed: " in message and "\n" not in message


def test_several_objectives_choose_fifo_and_one_keeps_asha():
    several = build_config(minimal(search={"objectives": {"score": "max", "peak_mem_mb": "min"}}))
    assert several.search.objective_list == [("score", "max"), ("peak_mem_mb", "min")]
    assert several.search.scheduler_name == "fifo"
    one = build_config(minimal())
    assert one.search.objective_list == [("score", "max")] and one.search.scheduler_name == "asha"


def test_yaml_syntax_error_and_missing_file_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: t\nspace: {freeze_stop: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: got '<file>' \(.*\); allowed: valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"--space: got '.*missing.yaml' \(no such file\)"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(unsafe)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"^--set: got 'epochs' ; allowed|^--set: got 'epochs'"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize(("space", "key", "value"), [
    ({"freeze_stop": IntRange(0, 9)}, "space.freeze_stop.high", "9"),  # beyond the model's 4 blocks
    ({"freeze_stop": IntRange(0, 4)}, "space.freeze_stop", "4"),  # 4 of 4 blocks: nothing left to train
    ({"freeze_stop": IntRange("none", "trunk")}, "space.freeze_stop.high", "'trunk'"),
    ({"freeze": Choice((0, "backbone", 2.5))}, "space.freeze.values[2]", "2.5"),
    ({"freeze_stop": FloatRange(0.0, 3.0)}, "space.freeze_stop.type", "'float'"),
])
def test_a_space_is_checked_against_the_model_before_any_trial(block_model, space, key, value):
    with pytest.raises(ConfigError) as caught:
        check_space(space, TrainConfig(), block_model)
    assert str(caught.value).startswith(f"{key}: got {value}"), str(caught.value)


def test_a_fixed_start_bounds_the_searched_stop(block_model):
    # a cut-point name as the fixed start is resolved before it is compared
    space = check_space({"freeze_stop": IntRange(2, 3)}, TrainConfig(freeze_start="backbone"), block_model)
    assert space["freeze_stop"] == IntRange(2, 3)
    # a fixed start above the searched stop's low bound would sample invalid ranges: refused up front
    with pytest.raises(ConfigError, match=r"^train.freeze_start: got 2; allowed: freeze_start <= freeze_stop"):
        check_space({"freeze_stop": IntRange(0, 3)}, TrainConfig(freeze_start=2), block_model)


def test_names_resolve_to_the_models_cut_points(block_model):
    space = check_space({"freeze_stop": IntRange("none", "all_but_head"), "lr": FloatRange(0.1, 0.2)},
                        TrainConfig(), block_model)
    assert space["freeze_stop"] == IntRange(0, 3)
    assert space["lr"] == FloatRange(0.1, 0.2)


def _sample(space, n, sampler):
    study = optuna.create_study(sampler=sampler)
    define = OptunaSpace(space)
    samples = []
    for _ in range(n):
        trial = study.ask()
        define(trial)
        samples.append(trial.params)
        study.tell(trial, 0.0)
    return samples


def test_int_bounds_are_inclusive_and_sampled_ranges_always_valid():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"freeze_stop": IntRange(0, 5), "freeze_start": IntRange(0, 5), "lr": FloatRange(1e-4, 1e-2, log=True),
             "batch_size": Choice((16, 32))}
    samples = _sample(space, 300, optuna.samplers.RandomSampler(seed=0))
    assert all(s["freeze_start"] <= s["freeze_stop"] for s in samples)
    assert {s["freeze_stop"] for s in samples} == set(range(6))
    assert {s["freeze_start"] for s in samples} == set(range(6))
    assert all(1e-4 <= s["lr"] <= 1e-2 for s in samples)
    assert {s["batch_size"] for s in samples} == {16, 32}


def test_every_search_space_file_has_a_header_and_loads():
    files = sorted((ROOT / "search_spaces").glob("*.yaml"))
    assert files
    for path in files:
        text = path.read_text()
        for field in ("# Command:", "# Runtime:", "# Expected:"):
            assert field in text, f"{path.name} lacks {field}"
        assert yaml.safe_load(text)["name"]
        load_config(path)


@pytest.mark.parametrize(("space", "message"), [
    ({"lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
     "space.lr.type: got 'float'; allowed: choice or int with search.algorithm: grid"),
    ({"freeze_start": {"type": "int", "low": 0, "high": 2}, "freeze_stop": {"type": "int", "low": 0, "high": 3}},
     "space.freeze_start: got '<searched>'; allowed: a fixed freeze_start with search.algorithm: grid"),
])
def test_a_grid_needs_finite_values_and_no_start_after_stop(space, message):
    with pytest.raises(ConfigError) as err:
        build_config(minimal(space=space, search={"algorithm": "grid"}))
    assert str(err.value).startswith(message)


def test_a_grid_runs_every_trial_to_the_end():
    cfg = build_config(minimal(search={"algorithm": "grid"}))
    assert cfg.search.scheduler_name == "fifo"
    assert cfg.search.num_samples == 1  # each combination once, unless num_samples says otherwise
    assert build_config(minimal(search={"algorithm": "grid", "num_samples": 3})).search.num_samples == 3
    with pytest.raises(ConfigError, match=r"^search.algorithm: got 'random' \(str\); allowed: one of optuna, grid"):
        build_config(minimal(search={"algorithm": "random"}))


@pytest.mark.parametrize("key", ["metric", "mode"])
def test_metric_and_mode_are_not_keys_score_is_always_the_objective(key):
    with pytest.raises(ConfigError, match=rf"^search.{key}: got 'x' \(no longer a key: the search optimises score"):
        build_config(minimal(search={key: "x"}))


@pytest.mark.parametrize(("search", "key", "value"), [
    ({"objectives": {"peak_mem_mb": "min"}}, "search.objectives", "{'peak_mem_mb': 'min'}"),
    ({"objectives": {"score": "min"}}, "search.objectives", "{'score': 'min'}"),
])
def test_a_single_objective_other_than_score_is_refused_because_the_report_ranks_by_score(search, key, value):
    with pytest.raises(ConfigError) as err:
        build_config(minimal(search=search))
    assert str(err.value).startswith(f"{key}: got {value}; allowed: score with mode max")
    objectives = build_config(minimal(search={"objectives": {"score": "max", "val_loss": "min"}})).search
    assert objectives.objective_list == [("score", "max"), ("val_loss", "min")]


@pytest.mark.parametrize("how", ["copy", "pickle"])
def test_a_config_error_survives_rays_copy_and_pickle_with_its_message_key_and_value(how):
    import copy
    import pickle
    import threading

    error = ConfigError("task.options.model", "my_bert", "a model folder or a hub name", problem="not found")
    again = copy.copy(error) if how == "copy" else pickle.loads(pickle.dumps(error))
    assert type(again) is ConfigError and str(again) == str(error)
    assert (again.key, again.value, again.allowed, again.problem) == ("task.options.model", "my_bert",
                                                                      "a model folder or a hub name", "not found")
    unpicklable = ConfigError("task.options.hook", threading.Lock(), "a plain value")  # travels as its repr
    assert str(pickle.loads(pickle.dumps(unpicklable))) == str(unpicklable)


def _smoke(space, task=None, **overrides):
    """The smoke test's checked config (tune.driver.checks) for ``space``; no run, no Ray."""
    from tune.driver.checks import StudyOptions, check_config

    return check_config(StudyOptions(space_file=space, smoke_test=True, overrides=list(overrides.items()), task=task,
                                     tracking_uri="sqlite:///never-created.db")).cfg


def test_a_smoke_search_tries_no_freeze_the_deepest_freeze_and_a_middle_one_first():
    """4 trials sampled by TPE cluster in the middle of the depth range (freeze_stop 4, 4, 3, 3 were seen): the smoke
    test's first trials are the range's two ends and its middle, each fixing only the depth (lr is sampled)."""
    cfg = _smoke("digits_freeze")
    assert cfg.space["freeze_stop"] == IntRange(0, 7)  # none .. all_but_head
    assert cfg.search.points_to_evaluate == ({"freeze_stop": 0}, {"freeze_stop": 7}, {"freeze_stop": 4})
    # the user's own points win over the smoke test's
    mine = _smoke("digits_freeze", **{"search.points_to_evaluate": [{"lr": 1e-3}]})
    assert mine.search.points_to_evaluate == ({"lr": 1e-3},)


@pytest.mark.parametrize(("dim", "expected"), [
    ({"type": "choice", "values": ["backbone", "none", 1, "all_but_head"]}, [0, 3, 2]),  # ends by value, not order
    ({"type": "int", "low": 1, "high": "all_but_head"}, [1, 3, 2]),
    ({"type": "int", "low": "none", "high": "all_but_head", "step": 2}, [0, 2]),  # on the step's grid, each once
])
def test_the_smoke_points_are_the_ends_of_a_choice_or_an_int_range(dim, expected):
    from conftest import make_tiny_task  # 4 blocks: c1, c2, neck, head; backbone = 2, all_but_head = 3

    space = {"name": "tiny", "space": {"freeze_stop": dim, "lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}
    cfg = _smoke(space, task=make_tiny_task)
    assert cfg.search.points_to_evaluate == tuple({"freeze_stop": stop} for stop in expected)


def test_a_range_spaces_smoke_points_are_no_freeze_the_widest_range_and_a_middle_one_and_a_fixed_freeze_gets_none():
    cfg = _smoke("digits_freeze_range")
    assert cfg.search.points_to_evaluate == ({"freeze_start": 0, "freeze_stop": 0},
                                             {"freeze_start": 0, "freeze_stop": 7},
                                             {"freeze_start": 3, "freeze_stop": 5})  # a middle range
    fixed = _smoke("digits_freeze", **{"space.freeze_stop": 3})
    assert fixed.search.points_to_evaluate == ()
