"""A trained window (train.train_start / train.train_stop): blocks [a, b) and the head train, the rest is frozen
(surgical fine-tuning). What it freezes, how it is checked, sampled and named (MLflow, the report, the race), and that
the frozen-prefix cache serves its frozen prefix [0, a) exactly."""

from __future__ import annotations

import dataclasses
import itertools

import optuna
import pytest
import torch
from conftest import first_epoch, tiny_block_model

import run_search
from tune.errors import ConfigError
from tune.settings.config import TrainConfig
from tune.settings.loading import load_config
from tune.settings.space import IntRange, OptunaSpace
from tune.training.freeze import FrozenModel, freeze_model, resolve
from tune.training.space_freezes import check_space, depth_points
from tune.training.train import LoopTrial, trial_plan

HEAD = 3  # the tiny model's blocks: c1, c2, neck, head


def _cfg(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(epochs=2, batch_size=8, lr=1e-2, head_init="zero", seed=1), **changes)


@pytest.mark.parametrize(("start", "stop"), [(a, b) for a, b in itertools.combinations(range(HEAD + 1), 2)])
def test_a_window_freezes_exactly_its_complement_and_trains_the_head(start, stop):
    block_model = tiny_block_model()
    spec = resolve(block_model, train_start=start, train_stop=stop)
    assert set(spec.blocks) == set(range(HEAD)) - set(range(start, stop))
    frozen = FrozenModel(block_model, spec)
    trained = {name for name, p in block_model.module.named_parameters() if p.requires_grad}
    expected = {name for name, block in block_model.param_blocks.items() if block in (*range(start, stop), HEAD)}
    assert trained == expected
    assert frozen.summary.trainable_params == sum(block_model.param_counts()[i] for i in (*range(start, stop), HEAD))
    # a window that reaches the head is the hard freeze [0, start) and is named so; any other says what it trains
    assert trial_plan(frozen, _cfg()).label == (f"[0, {start})" if stop == HEAD else f"train [{start}, {stop})")


@pytest.mark.parametrize(("keys", "key", "problem"), [
    ({"train_start": 2, "train_stop": 2}, "train_start", "an empty window"),
    ({"train_start": 2, "train_stop": 1}, "train_start", "an empty window"),
    ({"train_start": HEAD}, "train_start", "out of range"),  # the head always trains: a window starts below it
    ({"train_stop": 0}, "train_stop", "out of range"),
    ({"train_stop": HEAD + 1}, "train_stop", "out of range"),
    ({"train_start": 1.0}, "train_start", "a float is not a block index"),
    ({"train_start": 1, "freeze_stop": 1}, "freeze_stop", None),
    ({"train_stop": 2, "freeze": 1}, "freeze", None),
    ({"train_stop": 2, "freeze_start": 1}, "freeze_start", None),
])
def test_bad_windows_are_refused_naming_the_key(keys, key, problem):
    with pytest.raises(ConfigError) as caught:
        resolve(tiny_block_model(), **keys)
    assert caught.value.key == key and caught.value.problem == problem


def test_a_window_takes_cut_point_names_and_either_bound_alone():
    block_model = tiny_block_model()  # cut points: none=0, backbone=2, all_but_head=3
    assert resolve(block_model, train_start="backbone", train_stop="all_but_head").blocks == (0, 1)
    assert resolve(block_model, train_stop=1).blocks == (1, 2)  # train_start defaults to 0
    assert resolve(block_model, train_start=1).blocks == (0,)  # train_stop defaults to the head
    assert resolve(block_model, train_start=1, freeze_start="none").blocks == (0,)  # freeze_start's default: no freeze


@pytest.mark.parametrize(("overrides", "key"), [
    ([("train.freeze_stop", 2)], "train.freeze_stop"),
    ([("space.freeze_stop", {"type": "int", "low": 0, "high": 3})], "space.freeze_stop"),
    ([("train.unfreeze_epoch", 1)], "train.unfreeze_epoch"),  # a thaw thaws a range from its top: refused
    ([("space.unfreeze_epoch", {"type": "choice", "values": [0, 1]})], "space.unfreeze_epoch"),
    ([("space.train_stop", {"type": "choice", "values": [1, 7]})], "space.train_stop.type"),  # no floor for a choice
    # a grid would pair a stop at or below its start
    ([("search.algorithm", "grid"), ("space.lr", 1e-3), ("search.points_to_evaluate", [])], "space.train_start"),
])
def test_a_window_is_refused_beside_a_freeze_a_thaw_or_an_unordered_sampler(overrides, key):
    with pytest.raises(ConfigError) as caught:
        load_config("digits_window", overrides)
    assert caught.value.key == key


def test_a_searched_window_always_has_room_above_its_start():
    block_model = tiny_block_model()
    with pytest.raises(ConfigError, match=r"^space.train_start: got 3 \(no room\)"):
        check_space({"train_start": IntRange(0, 3), "train_stop": IntRange(1, 3)}, TrainConfig(), block_model)
    assert check_space({"train_start": IntRange(0, 2), "train_stop": IntRange(1, 3)}, TrainConfig(), block_model)


def test_the_sampler_draws_every_window_and_never_an_empty_one():
    space = {"train_start": IntRange(0, 6), "train_stop": IntRange(1, 7)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sample = OptunaSpace(space)
    drawn = set()
    for _ in range(300):
        trial = study.ask()
        sample(trial)
        drawn.add((trial.params["train_start"], trial.params["train_stop"]))
        study.tell(trial, 0.0)
    assert all(start < stop for start, stop in drawn)
    assert drawn == {(a, b) for a in range(7) for b in range(a + 1, 8)}  # all 28 windows, not only some


def test_a_smoke_test_of_a_window_space_starts_with_the_first_last_middle_and_widest_windows():
    space = {"train_start": IntRange(0, 6), "train_stop": IntRange(1, 7)}
    assert depth_points(space) == ({"train_start": 0, "train_stop": 1}, {"train_start": 6, "train_stop": 7},
                                   {"train_start": 3, "train_stop": 4}, {"train_start": 0, "train_stop": 7})


def test_a_window_trains_its_blocks_and_leaves_every_frozen_block_untouched(tiny_task):
    trial = LoopTrial(tiny_task, _cfg(train_start=1, train_stop=2, prefix_cache="off"))
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
    first_epoch(trial)
    blocks = trial.frozen.block_model.param_blocks
    changed = {blocks[n] for n, p in trial.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {1, HEAD}
    assert not any(m.training for m in trial.frozen.block_model.modules_of([2])
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))  # frozen after the window: eval too


def test_the_cache_serves_the_frozen_prefix_before_the_window_and_trains_exactly_as_without(tiny_task):
    cfg = _cfg(train_start=1, train_stop=2)
    cached, full = LoopTrial(tiny_task, cfg), LoopTrial(tiny_task, dataclasses.replace(cfg, prefix_cache="off"))
    assert cached.prefix_cache == "on"
    assert len(cached.net) == HEAD  # blocks 1, 2 (frozen, after the window: it runs every step) and the head
    first = cached.frozen.block_model.blocks[0]
    assert cached.cached_features[0].shape[1:] == first(tiny_task.train_data[0][:1]).shape[1:]  # block 0's outputs
    for with_cache, without in zip(cached.epochs(), full.epochs(), strict=True):
        for key in ("train_loss", "val_loss", "score"):
            assert with_cache[key] == pytest.approx(without[key], rel=1e-5, abs=1e-7), key
    for (name, a), (_, b) in zip(cached.model.named_parameters(), full.model.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    # a window from block 0 has no frozen prefix to cache
    assert LoopTrial(tiny_task, _cfg(train_start=0, train_stop=1)).prefix_cache == "off: the frozen blocks are not a " \
                                                                                   "prefix"


def test_a_window_and_the_hard_freeze_of_its_prefix_share_the_cached_outputs(tiny_task, tmp_path):
    from tune.training.prefix_cache import SharedPrefixCache

    shared = SharedPrefixCache(tmp_path / "prefix_cache")
    hard = LoopTrial(tiny_task, _cfg(freeze_stop=1), shared_cache=shared)
    window = LoopTrial(tiny_task, _cfg(train_start=1, train_stop=2), shared_cache=shared)
    assert (hard.prefix_cache, window.prefix_cache) == ("on (shared, computed)", "on (shared, loaded)")
    assert torch.equal(hard.cached_features[0], window.cached_features[0])


def test_a_window_is_named_train_a_b_in_its_run_its_params_and_the_report(tiny_task, tmp_path):
    from mlflow import MlflowClient

    from tune.reporting.analysis import candidates
    from tune.reporting.report import build_report
    from tune.settings.config import ReportConfig
    from tune.tracker.tracking import SearchTracker, fetch_trials
    from tune.tracker.trial_runs import TrialRuns

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SearchTracker(uri, "windows")
    tracker.start_search("search", {}, {})
    searched = ["train_start", "train_stop", "lr"]
    runs = TrialRuns(tracker, dataclasses.asdict(_cfg()), 2, searched=searched)
    windows = {"mid": (1, 2, 0.95), "first": (0, 1, 0.90), "last": (2, HEAD, 0.80), "decay": (1, 2, 0.96)}
    for name, (start, stop, score) in windows.items():
        params = {"train_start": start, "train_stop": stop, "lr": 0.01}
        cfg = _cfg(train_start=start, train_stop=stop, layer_decay=0.5 if name == "decay" else 1.0)
        result = {**first_epoch(LoopTrial(tiny_task, cfg)), "score": score}
        runs.result(name, params, {"phase": "search"}, result, first_since_restore=False)
        runs.complete(name, params, {"phase": "search"})
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(runs.run_ids["mid"])
    assert run.info.run_name == "train [1, 2) lr=0.01"
    assert run.data.params["policy"] == "train [1, 2)" and run.data.params["freeze_range"] == "{0, 2}"
    assert (run.data.params["train_start"], run.data.params["train_stop"]) == ("1", "2")
    assert client.get_run(runs.run_ids["decay"]).data.params["policy"] == "train [1, 2) decay 0.5"
    assert client.get_run(runs.run_ids["last"]).data.params["policy"] == "[0, 2)"  # it reaches the head: a hard freeze

    records = fetch_trials(uri, tracker.parent_run_id)
    report = build_report(records, searched=searched, objectives=[("score", "max")], tolerance=0.01,
                          cost="train_time_s")
    table = report.text.split("By policy:\n", 1)[1].split("\n\n", 1)[0]
    assert {line.split("  ")[0] for line in table.splitlines()[2:]} == {"train [1, 2)", "train [0, 1)", "[0, 2)",
                                                                       "train [1, 2) decay 0.5"}
    recommended = report.text.split("Recommendation: ", 1)[1]
    assert recommended.startswith("train [") and "freeze train" not in report.text  # a window's label says what trains
    # the race keeps the best hard freeze (the window reaching the head) however far below
    assert "last" in candidates(records, ReportConfig(tolerance=0.01), searched, top=3)




@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "space.train_start=3", "--set", "space.train_stop=3", "--set", "search.points_to_evaluate=[]"],
     "error: space.train_start: got 3 (an empty window); allowed: train_start < train_stop"),
    (["--set", "train.freeze_stop=2"], "error: train.freeze_stop: got 2; allowed: no freeze_stop beside a trained "
                                       "window"),
])
def test_a_bad_window_exits_2_in_one_line_before_any_trial(workdir, capsys, args, expected):
    code = run_search.main(["--space", "digits_window", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(expected), err
    assert sorted(p.name for p in workdir.iterdir()) == []  # no store, no Ray results, no report


def test_the_window_space_freezes_with_the_model_it_names():
    cfg = load_config("digits_window")
    assert set(cfg.space) == {"train_start", "train_stop", "lr"}
    frozen = freeze_model(tiny_block_model(), TrainConfig(train_start=1, train_stop=2))
    assert frozen.spec.window == (1, 2) and frozen.spec.prefix_stop == 1


def test_an_encoders_window_caches_the_chain_before_it_and_trains_as_the_whole_model_does(tmp_path):
    pytest.importorskip("transformers", reason="the text task needs transformers")
    from test_text import model_folder, sentences, write_csv

    from tune.tasks.text import make_task

    rows = sentences(120, seed=1)
    task = make_task(model=model_folder(tmp_path, "bert"), data=write_csv(tmp_path / "train.csv", rows[:80]),
                     val_data=write_csv(tmp_path / "val.csv", rows[80:]), max_length=16)
    # blocks: embeddings, layers 0-2, head; the window trains layer 1: embeddings and layer 0 are the cached chain,
    # layer 2 is frozen after it and runs every step
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, train_start=2, train_stop=3, seed=2, optimizer="adamw")
    cached, whole = LoopTrial(task, cfg), LoopTrial(task, dataclasses.replace(cfg, prefix_cache="off"))
    assert cached.prefix_cache == "on" and cached.frozen.spec.blocks == (0, 1, 3)
    for a, b in zip(cached.epochs(), whole.epochs(), strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    blocks = cached.frozen.block_model.param_blocks
    for (name, p), (_, q), (_, initial) in zip(cached.model.named_parameters(), whole.model.named_parameters(),
                                               task.build_model().module.named_parameters(), strict=True):
        if blocks[name] in (0, 1, 3):
            assert torch.equal(p, initial), name
        else:
            assert torch.allclose(p, q, atol=1e-6), name
