"""Beyond hard freezing (tune.training.policy): layer-wise learning-rate decay and gradual unfreezing in the built-in
trial. Which parameters each optimizer group holds and at what rate, what the thaw epoch changes (gradients, optimizer
state, BatchNorm, the prefix cache), that a trial resumed across its thaw reports what the uninterrupted one does,
and the policy's label."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_tiny_task, resumed_epochs
from torch import nn

from tune.errors import ConfigError
from tune.settings.config import TrainConfig
from tune.settings.loading import load_config
from tune.settings.policy import Policy
from tune.training.freeze import freeze_model
from tune.training.policy import plan
from tune.training.train import LoopTrial, parameter_groups

LR = 1e-2


def _groups(trial: LoopTrial) -> dict[int, float]:
    groups = {g["block"]: g["lr"] for g in trial.optimizer.param_groups}
    assert list(groups) == sorted(groups) and len(groups) == len(trial.optimizer.param_groups)
    return groups


def _cfg(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(epochs=3, batch_size=8, lr=LR, head_init="zero", prefix_cache="off",
                                           seed=1), **changes)


@pytest.mark.parametrize(("freeze", "expected"), [
    # every block trains: the head at lr, each block below at one more factor of the decay
    ({}, {0: LR * 0.5 ** 3, 1: LR * 0.25, 2: LR * 0.5, 3: LR}),
    # a frozen prefix: the blocks above it keep the scales they had
    ({"freeze_stop": 2}, {2: LR * 0.5, 3: LR}),
    # a frozen middle: the scales count the trained blocks only, so block 0 is one step below the head (timm #2691)
    ({"freeze": (1, 2)}, {0: LR * 0.5, 3: LR}),
])
def test_layer_decay_gives_each_trained_block_its_rate_counted_over_the_trained_blocks(tiny_task, freeze, expected):
    trial = LoopTrial(tiny_task, _cfg(layer_decay=0.5, **freeze))
    assert _groups(trial) == pytest.approx(expected)
    blocks = trial.model.blocks
    for group in trial.optimizer.param_groups:
        assert {id(p) for p in group["params"]} == {id(p) for p in blocks[group["block"]].parameters()}
    # the head's own multiplier on top of the decay
    with_mult = LoopTrial(tiny_task, _cfg(layer_decay=0.5, head_lr_mult=10.0, **freeze))
    assert _groups(with_mult) == pytest.approx({b: lr * (10.0 if b == 3 else 1.0) for b, lr in expected.items()})


def test_every_trainable_parameter_of_a_vit_is_in_exactly_one_group_root_level_ones_with_their_block():
    timm = pytest.importorskip("timm", reason="the image extra (timm) is not installed")
    from tune.blocks import timm_blocks

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
                              reg_tokens=2, num_classes=3)
    block_model = timm_blocks(model, torch.zeros(1, 3, 32, 32))
    roots = {"cls_token", "reg_token", "pos_embed"}
    for freeze_stop in (0, 2):
        frozen = freeze_model(block_model, _cfg(layer_decay=0.7, freeze_stop=freeze_stop))
        groups = parameter_groups(frozen, _cfg(layer_decay=0.7, freeze_stop=freeze_stop))
        held = [id(p) for g in groups for p in g["params"]]
        assert len(held) == len(set(held))  # no parameter twice
        assert set(held) == {id(p) for p in model.parameters() if p.requires_grad}  # none missing (timm #2712)
        names = {id(p): n for n, p in model.named_parameters()}
        first = next(g for g in groups)
        if freeze_stop == 0:  # the root-level tokens sit in the first block, at its decayed rate
            assert roots <= {names[id(p)] for p in first["params"]}
            assert first["lr"] == pytest.approx(LR * 0.7 ** (block_model.n_blocks - 1))
        for param in block_model.parameters_of(range(freeze_stop)):
            param.requires_grad_(True)  # the next freeze starts from the whole model


def _params(block: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in block.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_thaw_epoch_unfreezes_the_range_into_its_groups_and_returns_its_batchnorm_to_training(tiny_task):
    trial = LoopTrial(tiny_task, _cfg(freeze_stop=2, unfreeze_epoch=1, layer_decay=0.5))
    blocks = trial.model.blocks
    # the thawing blocks have their groups from the start, at their decayed rates
    assert _groups(trial) == pytest.approx({0: LR * 0.125, 1: LR * 0.25, 2: LR * 0.5, 3: LR})
    assert [g["start"] for g in trial.optimizer.param_groups] == [1, 1, 0, 0]
    start, bn = _params(blocks[0]), blocks[0][1]
    stats = bn.running_mean.clone()
    epochs = trial.epochs()
    first = next(epochs)
    # epoch 1: frozen: no gradient, no step, no optimizer state, BatchNorm statistics kept
    assert _same(start, _params(blocks[0])) and torch.equal(stats, bn.running_mean)
    assert all(p.grad is None and p not in trial.optimizer.state for p in blocks[0].parameters())
    assert first["epoch_frozen_flops_share"] > 0 and first["policy"] == "[0, 2) thaw@1 decay 0.5"
    second = next(epochs)
    # epoch 2: thawed: trained at its group's rate with optimizer state, BatchNorm back in training mode
    assert not _same(start, _params(blocks[0])) and not torch.equal(stats, bn.running_mean)
    assert all(p.requires_grad and p in trial.optimizer.state for p in blocks[0].parameters())
    assert second["epoch_frozen_flops_share"] == 0.0
    trial.frozen.train_mode(trial.net)
    assert bn.training


def test_a_thawed_block_takes_its_first_step_at_its_groups_rate(tiny_task):
    trial = LoopTrial(tiny_task, _cfg(freeze_stop=2, unfreeze_epoch=1, layer_decay=0.5))
    next(trial.epochs())
    trial._thaw()
    weight = trial.model.blocks[0][0].weight
    before = weight.detach().clone()
    trial._step(next(iter(trial._train_batches(1))))
    # Adam's first step moves each element by lr * g / (|g| + eps): the group's rate, lr * 0.5 ** 3
    assert (weight.detach() - before).abs().max().item() == pytest.approx(LR * 0.125, rel=1e-3)


def test_gradual_unfreezing_thaws_a_block_at_a_time_from_the_top(tiny_task):
    trial = LoopTrial(tiny_task, _cfg(epochs=4, freeze_stop=3, unfreeze_epoch=1, unfreeze_every=2))
    blocks = trial.model.blocks
    assert trial.plan.starts == {1: 3, 2: 1, 3: 0}  # block 0's turn (epoch 5) comes after the last epoch
    assert trial.plan.label == "[0, 3) thaw@1 every 2"
    before = [_params(b) for b in blocks]
    changed = []
    for _ in trial.epochs():
        now = [_params(b) for b in blocks]
        changed.append([not _same(a, b) for a, b in zip(before, now, strict=True)])
        before = now
    assert changed == [[False, False, False, True], [False, False, True, True], [False, False, True, True],
                       [False, True, True, True]]
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert 0 not in {g["block"] for g in trial.optimizer.param_groups}  # never trained: in no group


def test_a_thawed_group_warms_up_again_from_its_thaw(tiny_task):
    cfg = _cfg(freeze_stop=2, unfreeze_epoch=1, warmup=0.25)
    trial = LoopTrial(tiny_task, cfg)
    seen = []
    trial.optimizer.register_step_pre_hook(lambda opt, *a: seen.append([g["lr"] for g in opt.param_groups]))
    list(trial.epochs())
    per_epoch = -(-len(tiny_task.train_data[0]) // 8)
    total, warm = 3 * per_epoch, int(0.25 * 3 * per_epoch)
    base = [LR * ((k + 1) / (warm + 1) if k < warm else 1.0) for k in range(total)]
    assert [lrs[-1] for lrs in seen] == pytest.approx(base)  # the head: the schedule alone
    thawed = [base[k] * min(1.0, (k - per_epoch + 1) / (warm + 1)) for k in range(per_epoch, total)]
    assert [lrs[0] for lrs in seen[per_epoch:]] == pytest.approx(thawed)


@pytest.mark.parametrize("after", [1, 2])
def test_a_trial_resumed_before_or_after_its_thaw_reports_what_the_uninterrupted_one_does(tiny_task, tmp_path, after):
    cfg = _cfg(freeze_stop=2, unfreeze_epoch=1, layer_decay=0.7, prefix_cache="auto")
    straight = list(LoopTrial(tiny_task, cfg).epochs())
    resumed = resumed_epochs(tiny_task, cfg, tmp_path, after=after)
    for want, have in zip(straight, resumed, strict=True):
        assert (have["epoch"], have["train_loss"], have["score"]) == (want["epoch"], want["train_loss"],
                                                                      want["score"])
        assert have["epoch_frozen_flops_share"] == want["epoch_frozen_flops_share"]


def test_the_prefix_cache_serves_the_frozen_epochs_and_stops_at_the_thaw(tiny_task):
    cfg = _cfg(freeze_stop=2, unfreeze_epoch=2, prefix_cache="auto")
    cached = LoopTrial(tiny_task, cfg)
    assert cached.prefix_cache.startswith("on") and cached.prefix_cache.endswith("until the thaw after epoch 2")
    assert cached.net is not cached.model
    uncached = LoopTrial(tiny_task, dataclasses.replace(cfg, prefix_cache="off"))
    for epoch, (a, b) in enumerate(zip(cached.epochs(), uncached.epochs(), strict=True), start=1):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) and a["score"] == b["score"]
        assert (cached.net is cached.model) == (epoch > 2)
    assert cached.cached_features == []


def test_plan_labels_the_policy_and_leaves_out_what_it_does_not_use():
    cfg = _cfg(epochs=10)
    counts = [5, 5, 0, 5, 5]  # block 2 has no parameters: never a group, never a thaw step
    assert plan(counts, (0, 1, 2), cfg).label == "[0, 3)"
    thaw = plan(counts, (0, 1, 2), dataclasses.replace(cfg, unfreeze_epoch=2, unfreeze_every=3))
    assert thaw.starts == {0: 5, 1: 2, 3: 0, 4: 0} and thaw.label == "[0, 3) thaw@2 every 3"
    assert plan(counts, (), dataclasses.replace(cfg, unfreeze_epoch=2)).label == "[0, 0)"
    decay = plan(counts, (0,), dataclasses.replace(cfg, layer_decay=0.8))
    assert decay.label == "[0, 1) decay 0.8"
    assert decay.scales == pytest.approx({1: 0.8 ** 2, 3: 0.8, 4: 1.0})
    # a decay on the head alone changes nothing: the trial is the hard freeze, and is named so
    head_only = plan(counts, (0, 1, 2, 3), dataclasses.replace(cfg, layer_decay=0.6))
    assert head_only.label == "[0, 4)" and head_only.scales == {4: 1.0}


@pytest.mark.parametrize(("override", "key"), [
    (("train.unfreeze_epoch", 10), "train.unfreeze_epoch"),  # the thaw would come after the last epoch
    (("space.unfreeze_epoch", {"type": "int", "low": 0, "high": 10}), "space.unfreeze_epoch.high"),
    (("space.unfreeze_epoch", {"type": "float", "low": 0, "high": 3}), "space.unfreeze_epoch.type"),
    (("train.layer_decay", 0), "train.layer_decay"),
    (("train.layer_decay", 1.5), "train.layer_decay"),
    (("train.unfreeze_every", -1), "train.unfreeze_every"),
])
def test_bad_policy_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as caught:
        load_config("digits_freeze", [override])
    assert caught.value.key == key


def test_the_digits_policy_space_loads_and_searches_the_policy_with_the_range():
    cfg = load_config("digits_policy")
    assert {"freeze_stop", "layer_decay", "unfreeze_epoch"} <= set(cfg.space)
    assert cfg.report.cost == "train_time_s"


def test_hard_freezing_alone_trains_every_trained_block_at_lr():
    """layer_decay 1 and no thaw: one rate for every block, nothing thaws, the label is the range."""
    task = make_tiny_task()
    trial = LoopTrial(task, _cfg(freeze_stop=1))
    assert {g["lr"] for g in trial.optimizer.param_groups} == {LR} and trial.plan.label == "[0, 1)"
    assert not trial.plan.thaws


def _policy_record(name: str, stop: int, policy: str, scores: list[float], epoch_time: float, memory: float = 8.0,
                   adds: dict | None = None, **params: str):
    """A trial's record freezing [0, stop) with what its policy ``adds`` (Policy's fields): its run's params are the
    Policy's (what a trial logs), whose label is ``policy``."""
    from test_report import record

    logged = Policy(frozen=tuple(range(stop)), **(adds or {}))
    assert logged.label == policy
    made = record(name, stop, scores, epoch_time, memory)
    made.params.update({"layer_decay": "1.0", "unfreeze_epoch": "0", "trainable_params": str(100 - 10 * stop),
                        **params, **{key: str(value) for key, value in logged.params().items()}})
    return made


def test_the_report_names_trials_by_policy_and_compares_time_to_the_best_epoch():
    from tune.reporting.analysis import POLICY_FRONTIER, candidates
    from tune.reporting.report import build_report
    from tune.settings.config import ReportConfig

    records = [
        # the same range, three policies: each its own row, and each may be a candidate
        _policy_record("hard", 3, "[0, 3)", [0.90], 1.0, layer_decay="1.0", unfreeze_epoch="0"),
        _policy_record("thaw", 3, "[0, 3) thaw@1", [0.80, 0.915], 1.5, adds={"thaw": 1}, layer_decay="1.0",
                       unfreeze_epoch="1"),
        _policy_record("decay", 3, "[0, 3) decay 0.7", [0.5, 0.6, 0.7, 0.915], 1.0, adds={"decay": 0.7},
                       layer_decay="0.7",
                       unfreeze_epoch="0"),
        _policy_record("none", 0, "[0, 0)", [0.85], 2.0, layer_decay="1.0", unfreeze_epoch="0"),
    ]
    searched = ["freeze_stop", "layer_decay", "unfreeze_epoch", "lr"]
    report = build_report(records, searched=searched, objectives=[("score", "max")], tolerance=0.01,
                          cost="train_time_s")
    assert report.objectives == list(POLICY_FRONTIER)
    # the thaw reached 0.915 after 3.0 s, the decay after 4.0 s at a cheaper epoch: time to the best epoch decides
    assert [r.name for r in report.front] == ["thaw", "hard"]
    text = report.text
    assert "By policy:" in text and "Recommendation: freeze [0, 3) thaw@1 (lr=0.001)" in text
    table = text.split("By policy:\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split("  ")[0] for line in table.splitlines()[2:]] == ["[0, 0)", "[0, 3)", "[0, 3) decay 0.7",
                                                                        "[0, 3) thaw@1"]
    header = next(line for line in text.splitlines() if line.split()[:2] == ["trial", "policy"])
    assert "lr" in header.split() and "layer_decay" not in header and "unfreeze_epoch" not in header  # in the label
    picked = candidates(records, ReportConfig(tolerance=0.01), searched, top=3)
    assert set(picked) == {"thaw", "decay", "hard"}  # one range, three policies: each its own candidate
    assert picked["thaw"]["unfreeze_epoch"] == 1
    hard_only = [r for r in records if r.name in ("hard", "none")]
    plain = build_report(hard_only, searched=searched, objectives=[("score", "max")], tolerance=0.01,
                         cost="train_time_s")
    assert "By freeze range:" in plain.text and "By policy:" not in plain.text


def test_the_best_hard_freeze_is_a_candidate_where_policies_were_searched_however_far_below():
    from tune.reporting.analysis import candidates
    from tune.settings.config import ReportConfig

    searched = ["freeze_stop", "layer_decay", "unfreeze_epoch", "lr"]
    records = [_policy_record("thaw", 5, "[0, 5) thaw@1", [0.95], 1.0, adds={"thaw": 1}),
               _policy_record("decay", 0, "[0, 0) decay 0.8", [0.948], 1.2, adds={"decay": 0.8}),
               _policy_record("decay2", 2, "[0, 2) decay 0.6", [0.947], 1.1, adds={"decay": 0.6}),
               _policy_record("hard", 2, "[0, 2)", [0.80], 0.5), _policy_record("hard2", 6, "[0, 6)", [0.70], 0.3)]
    picked = candidates(records, ReportConfig(tolerance=0.01), searched, top=3)
    assert "hard" in picked and len(picked) == 3  # the race will say by how much freezing alone is worse
    assert list(candidates(records, ReportConfig(tolerance=0.01), searched, top=4)) == ["thaw", "decay", "decay2",
                                                                                         "hard"]
    alone = [r for r in records if r.name.startswith("hard")] + [record_hard("h3", 1, 0.9)]
    assert "hard" not in candidates(alone, ReportConfig(tolerance=0.01), searched, top=3)  # hard freezes alone


def record_hard(name: str, stop: int, score: float):
    return _policy_record(name, stop, f"[0, {stop})", [score], 1.0)


@pytest.mark.parametrize(("space", "points", "key"), [
    ("digits_policy", [{"momentum": 0.5}], "search.points_to_evaluate[0].momentum"),  # not searched
    ("digits_policy", [{"layer_decay": 1.0}, {"layer_decay": 0.7}], "search.points_to_evaluate[1].layer_decay"),
    ("digits_freeze", [{"lr": 1.0}], "search.points_to_evaluate[0].lr"),  # outside the searched range
    ("digits_freeze", {"lr": 1e-3}, "search.points_to_evaluate"),  # not a list
])
def test_points_to_evaluate_name_searched_keys_with_values_their_dimension_takes(space, points, key):
    with pytest.raises(ConfigError) as caught:
        load_config(space, [("search.points_to_evaluate", points)])
    assert caught.value.key == key


def test_points_to_evaluate_resolve_cut_point_names_against_the_model(tiny_task):
    from tune.training.space_freezes import check_points, check_space

    cfg = load_config("digits_freeze", [("search.points_to_evaluate", [{"freeze_stop": "backbone"}, {"lr": 1e-3}])])
    block_model = tiny_task.build_model()
    space = check_space(cfg.space, cfg.train, block_model)
    assert check_points(cfg.search.points_to_evaluate, space, block_model) == ({"freeze_stop": 2}, {"lr": 1e-3})
    with pytest.raises(ConfigError) as caught:
        check_points([{"freeze_stop": "neck"}], space, block_model)
    assert caught.value.key == "search.points_to_evaluate[0].freeze_stop"


def test_a_thawing_trial_measures_and_asks_for_the_memory_it_needs_after_its_thaw(tiny_task):
    """Freeze-aware GPU shares (search.freeze_aware_gpus): a trial's memory after one optimizer step is taken after its
    last thaw (a thaw of the whole range needs what no freeze needs), and a thawing trial asks for the full share."""
    from types import SimpleNamespace

    from tune.driver.resources import FreezeAwareResources

    cfg = _cfg(batch_size=8)
    none, hard = (LoopTrial(tiny_task, _cfg(freeze_stop=k)).measure_memory() for k in (0, 3))
    thawing = LoopTrial(tiny_task, _cfg(freeze_stop=3, unfreeze_epoch=1)).measure_memory()
    assert hard < none and thawing == pytest.approx(none)
    resources = SimpleNamespace(cpus=1, full=0.5, train=cfg, block_model=tiny_task.build_model(),
                                shares={(0, 1, 2): 0.1})
    share = FreezeAwareResources.__call__
    assert share(resources, {"freeze_stop": 3}).bundles == [{"CPU": 1, "GPU": 0.1}]
    assert share(resources, {"freeze_stop": 3, "unfreeze_epoch": 1}).bundles == [{"CPU": 1, "GPU": 0.5}]
