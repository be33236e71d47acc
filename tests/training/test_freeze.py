"""The freeze engine: which blocks a freeze names, that they really freeze, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tune.blocks import BlockModel, block_flops
from tune.errors import ConfigError
from tune.settings.config import TrainConfig
from tune.training.freeze import FrozenModel, resolve
from tune.training.train import LoopTrial


def frozen_blocks_of(block_model: BlockModel) -> set[int]:
    """Blocks whose every parameter has requires_grad=False, read from the parameter names."""
    frozen: dict[int, bool] = {}
    for name, param in block_model.module.named_parameters():
        index = int(name.split(".")[1])  # blocks.<i>.<...>
        frozen[index] = frozen.get(index, True) and not param.requires_grad
    return {i for i, is_frozen in frozen.items() if is_frozen}


@pytest.mark.parametrize(("keys", "expected"), [
    ({"freeze": 0}, ()),
    ({"freeze": 2}, (0, 1)),  # YOLOv5's --freeze N: blocks [0, N)
    ({"freeze": 3}, (0, 1, 2)),
    ({"freeze": [1, 3]}, (1, 3)),  # a list: exactly those blocks
    ({"freeze": [2, 0, 2]}, (0, 2)),
    ({"freeze_start": 1, "freeze_stop": 3}, (1, 2)),  # the searchable range [start, stop)
    ({"freeze_stop": 2}, (0, 1)),
    ({"freeze_start": 2, "freeze_stop": 2}, ()),
    ({"freeze": "none"}, ()),
    ({"freeze": "backbone"}, (0, 1)),
    ({"freeze": "all_but_head"}, (0, 1, 2)),
    ({"freeze_start": "backbone", "freeze_stop": "all_but_head"}, (2,)),
])
def test_resolve_and_apply_freeze_exactly_the_named_blocks(block_model, keys, expected):
    spec = resolve(block_model, **keys)
    assert spec.blocks == expected
    frozen = FrozenModel(block_model, spec)
    assert frozen_blocks_of(block_model) == set(expected)
    total = sum(p.numel() for p in block_model.module.parameters())
    in_frozen = sum(p.numel() for i in expected for p in block_model.blocks[i].parameters())
    assert frozen.summary.frozen_params == in_frozen
    assert frozen.summary.trainable_params == total - in_frozen


@pytest.mark.parametrize(("keys", "key", "shown"), [
    ({"freeze": 2.0}, "freeze", "2.0"),
    ({"freeze": True}, "freeze", "True"),
    ({"freeze_stop": 1.5}, "freeze_stop", "1.5"),
    ({"freeze_stop": 5}, "freeze_stop", "5"),
    ({"freeze": -1}, "freeze", "-1"),
    ({"freeze": [0, 4]}, "freeze[1]", "4"),
    ({"freeze": [0, False]}, "freeze[1]", "False"),
    ({"freeze_start": 3, "freeze_stop": 1}, "freeze_start", "3"),
    ({"freeze": 4}, "freeze", "4"),  # every block
    ({"freeze": [0, 1, 2, 3]}, "freeze", "[0, 1, 2, 3]"),  # every block, as a list
    ({"freeze_stop": "neck"}, "freeze_stop", "'neck'"),
    ({"freeze": 2, "freeze_stop": 2}, "freeze", "2"),
])
def test_bad_freeze_is_one_line_naming_key_value_and_allowed(block_model, keys, key, shown):
    with pytest.raises(ConfigError) as caught:
        resolve(block_model, **keys)
    message = str(caught.value)
    assert message.startswith(f"{key}: got {shown}")
    assert "allowed:" in message and "\n" not in message


# With the prefix cache on, frozen blocks run once under no_grad: their weights and statistics would stay put even if
# freezing did nothing. With it off, every step runs them: only requires_grad=False, the optimizer and eval mode
# keep them. Both are tested.
CACHE = pytest.mark.parametrize(("prefix_cache", "state"), [("auto", "on"), ("off", "off: off in the config")])


@CACHE
def test_training_changes_trainable_params_and_leaves_frozen_ones_bit_identical(tiny_task, prefix_cache, state):
    trial = LoopTrial(tiny_task, TrainConfig(epochs=2, batch_size=8, lr=1e-2, freeze_stop=2, prefix_cache=prefix_cache))
    assert trial.prefix_cache == state
    before = {name: p.detach().clone() for name, p in trial.model.named_parameters()}
    list(trial.epochs())
    for name, param in trial.model.named_parameters():
        block = int(name.split(".")[1])
        if block < 2:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(param, before[name]), f"trainable {name} did not change"


def _bn_stats(model: nn.Module, blocks: range) -> list[torch.Tensor]:
    return [t.clone() for i in blocks for m in model.blocks[i].modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


@CACHE
def test_frozen_batchnorm_keeps_its_statistics_by_default(tiny_task, prefix_cache, state):
    trial = LoopTrial(tiny_task, TrainConfig(epochs=1, batch_size=8, freeze_stop=1, prefix_cache=prefix_cache))
    assert trial.prefix_cache == state
    frozen_before, trainable_before = _bn_stats(trial.model, range(1)), _bn_stats(trial.model, range(1, 2))
    list(trial.epochs())
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, _bn_stats(trial.model, range(1)), strict=True))
    # the trainable block's BatchNorm did update: the check above is not vacuous
    assert not all(torch.equal(a, b) for a, b in zip(trainable_before, _bn_stats(trial.model, range(1, 2)),
                                                     strict=True))


def test_frozen_bn_train_lets_statistics_drift_as_yolov5_does(tiny_task):
    trial = LoopTrial(tiny_task, TrainConfig(epochs=1, batch_size=8, freeze_stop=1, frozen_bn="train"))
    before = _bn_stats(trial.model, range(1))
    weights = [p.detach().clone() for p in trial.model.blocks[0].parameters()]
    list(trial.epochs())
    assert not all(torch.equal(a, b) for a, b in zip(before, _bn_stats(trial.model, range(1)), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(weights, trial.model.blocks[0].parameters(), strict=True))


def test_optimizer_holds_exactly_the_trainable_params(tiny_task):
    trial = LoopTrial(tiny_task, TrainConfig(epochs=1, freeze=[0, 2]))
    in_optimizer = {id(p) for group in trial.optimizer.param_groups for p in group["params"]}
    frozen = {id(p) for i in (0, 2) for p in trial.model.blocks[i].parameters()}
    trainable = {id(p) for p in trial.model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    assert not in_optimizer & frozen


def _linear_blocks() -> BlockModel:
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 30), nn.Linear(30, 5))
    return BlockModel(module=model, blocks=list(model), block_names=["a", "b", "c"], cut_points={},
                      example_input=torch.zeros(4, 10))


def test_frozen_flops_share_is_measured_per_block():
    block_model = _linear_blocks()
    # a matmul of (4 x n) by (n x m) is 2 * 4 * n * m FLOPs
    assert block_flops(block_model) == [2 * 4 * 10 * 20, 2 * 4 * 20 * 30, 2 * 4 * 30 * 5]
    summary = FrozenModel(block_model, resolve(block_model, freeze=2)).summary
    assert summary.frozen_flops_share == pytest.approx((1600 + 4800) / (1600 + 4800 + 1200))


@pytest.mark.parametrize(("keys", "label"), [
    ({"freeze": 2}, "[0, 2)"), ({"freeze_start": 1, "freeze_stop": 3}, "[1, 3)"), ({"freeze": 0}, "[0, 0)"),
    ({"freeze": [0, 2]}, "{0, 2}"), ({"freeze": [1, 2]}, "[1, 3)"),
])
def test_a_freeze_is_labelled_as_a_range_only_when_it_is_one(block_model, keys, label):
    summary = FrozenModel(block_model, resolve(block_model, **keys)).summary
    assert summary.label == label and summary.as_metrics()["freeze_label"] == label
