"""The new head's start (train.head_init): a linear probe fitted once on the frozen features, zero, or the library's
init; and the head's own learning rate (train.head_lr_mult)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_tiny_task

from tune.settings.config import TrainConfig
from tune.training import probe, train
from tune.training.train import LoopTrial, fit_head_probe


def _blobs(n: int, classes: int = 3, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Features far from standardised (offset, scaled) whose class moves their mean: a probe can learn them."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(n) % classes
    centres = 3 * torch.randn(classes, dim, generator=generator)
    features = centres[targets] + torch.randn(n, dim, generator=generator)
    return 50 + 20 * features, targets


def test_the_probe_fits_raw_features_and_is_deterministic():
    features, targets = _blobs(180)
    train_split, val_split = (features[:120], targets[:120]), (features[120:], targets[120:])
    fitted = probe.fit_probe(train_split, val_split, 3, "head")
    assert fitted.val_accuracy > 0.9 and fitted.l2 in probe.L2_GRID
    # the standardisation is folded into the weights: they apply to the raw features as a Linear layer would
    logits = val_split[0] @ fitted.weight.T + fitted.bias
    assert (logits.argmax(1) == val_split[1]).float().mean().item() == pytest.approx(fitted.val_accuracy, abs=1e-9)
    again = probe.fit_probe(train_split, val_split, 3, "head")
    assert torch.equal(again.weight, fitted.weight) and torch.equal(again.bias, fitted.bias)


def test_the_classifier_is_the_final_linear_of_the_head_block():
    block_model = make_tiny_task().build_model()
    name, linear = probe.classifier_of(block_model)
    assert name == "blocks.3" and linear is block_model.module.blocks[3]


def test_a_trial_starts_its_head_from_the_searchs_probe_bit_for_bit_and_fits_none_itself(monkeypatch):
    task = make_tiny_task()
    fitted = fit_head_probe(task, TrainConfig())
    assert fitted is not None and 0 <= fitted.score <= 1
    calls = []
    monkeypatch.setattr(train, "fit_head_probe", lambda *args: calls.append(args))
    for stop in (0, 2, 3):
        trial = LoopTrial(task, TrainConfig(freeze_stop=stop, epochs=1), head_probe=fitted)
        head = trial.model.blocks[3]
        assert torch.equal(head.weight, fitted.weight) and torch.equal(head.bias, fitted.bias)
        assert trial.head_start == "probe (the search's)"
    assert calls == []


def test_the_all_but_head_trial_starts_at_the_probes_score():
    task = make_tiny_task()
    fitted = fit_head_probe(task, TrainConfig())
    trial = LoopTrial(task, TrainConfig(freeze_stop=3, epochs=1, lr=1e-12), head_probe=fitted)
    assert next(trial.epochs())["score"] == pytest.approx(fitted.score)  # a step of 1e-12 changes no prediction


def test_a_probe_started_trial_reports_its_start_as_epoch_0_once_even_across_a_resume():
    task = make_tiny_task()
    fitted = fit_head_probe(task, TrainConfig())
    cfg = TrainConfig(freeze_stop=1, epochs=2)
    trial, reported = LoopTrial(task, cfg, head_probe=fitted), []
    trial.run(reported.append)
    assert [m["epoch"] for m in reported] == [0, 1, 2]
    start = reported[0]
    assert start["score"] == pytest.approx(fitted.score) and start["train_time_s"] == 0.0  # the probe, untrained
    assert all(start[k] != start[k] for k in ("epoch_time_s", "peak_mem_mb", "train_loss"))  # NaN: not measured
    assert start["trainable_params"] == reported[1]["trainable_params"]  # the freeze summary, as every epoch's
    # a trial checkpointed at epoch 0 (as the search does after each report), stopped, restored: on at epoch 1
    checkpointed, states = LoopTrial(task, cfg, head_probe=fitted), []

    def stop_after_checkpoint(metrics: dict) -> None:
        states.append(checkpointed.state_dict())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpointed.run(stop_after_checkpoint)
    resumed, after = LoopTrial(task, cfg, head_probe=fitted), []
    resumed.load_state_dict(states[0])
    resumed.run(after.append)
    assert [m["epoch"] for m in after] == [1, 2]
    # heads not started from the probe have no epoch 0
    for how in ("zero", "library"):
        plain, got = LoopTrial(task, dataclasses.replace(cfg, head_init=how)), []
        plain.run(got.append)
        assert [m["epoch"] for m in got] == [1, 2]


def test_a_trial_on_its_own_fits_the_probe_and_the_same_probe_each_time():
    task = make_tiny_task()
    first, second = (LoopTrial(task, TrainConfig(freeze_stop=2)) for _ in range(2))
    assert first.head_start == "probe (fitted by this trial)"
    assert torch.equal(first.model.blocks[3].weight, second.model.blocks[3].weight)


@pytest.mark.parametrize("how", ["zero", "library"])
def test_zero_and_library_heads(how):
    task = make_tiny_task()
    torch.manual_seed(0)
    built = task.build_model().module.blocks[3]
    trial = LoopTrial(task, TrainConfig(head_init=how))
    head = trial.model.blocks[3]
    if how == "zero":
        assert not head.weight.any() and not head.bias.any()
    else:
        assert torch.equal(head.weight, built.weight)
    assert trial.head_start == how


def test_the_head_block_gets_its_own_learning_rate():
    task = make_tiny_task()
    trial = LoopTrial(task, TrainConfig(head_init="zero", lr=1e-3, head_lr_mult=10.0, freeze_stop=1))
    groups = trial.optimizer.param_groups  # one per trained block (tune.training.policy)
    head = {id(p) for p in trial.model.blocks[3].parameters()}
    assert [(g["block"], g["lr"]) for g in groups] == [(1, 1e-3), (2, 1e-3), (3, 1e-2)]
    assert {id(p) for p in groups[-1]["params"]} == head
    assert not head & {id(p) for g in groups[:-1] for p in g["params"]}
    frozen = {id(p) for p in trial.model.blocks[0].parameters()}
    assert not frozen & {id(p) for g in groups for p in g["params"]}
    one = LoopTrial(task, TrainConfig(head_init="zero", freeze_stop=1)).optimizer.param_groups
    assert {g["lr"] for g in one} == {1e-3}


def test_a_task_with_its_own_trial_or_no_classifier_gets_no_probe():
    task = make_tiny_task()
    own = dataclasses.replace(task, make_trial=lambda *args: None)
    assert fit_head_probe(own, TrainConfig()) is None


def test_a_new_layer_before_the_classifier_starts_as_the_probe_saw_it_whatever_the_trials_seed():
    from torch import nn

    from tune.blocks import BlockModel

    base = make_tiny_task()

    def build() -> BlockModel:  # RoBERTa's classifier.dense in small: a new layer the trial's seed initialises
        new_head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        model = base.build_model()
        model.module.blocks[3] = new_head
        return BlockModel(module=model.module, blocks=list(model.module.blocks), block_names=model.block_names,
                          cut_points=model.cut_points, example_input=model.example_input, sequential=True)

    task = dataclasses.replace(base, build_model=build)
    fitted = fit_head_probe(task, TrainConfig(seed=0))
    assert set(fitted.head) == {"blocks.3.0.weight", "blocks.3.0.bias"}
    for seed in (0, 3):
        head = LoopTrial(task, TrainConfig(seed=seed, freeze_stop=3), head_probe=fitted).model.blocks[3]
        assert torch.equal(head[0].weight, fitted.head["blocks.3.0.weight"]) and torch.equal(head[2].weight,
                                                                                              fitted.weight)
