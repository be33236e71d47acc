"""The policy as data (tune.settings.policy.Policy): its one label for each kind of policy, byte for byte the names
runs and stores carry; the trial's plan building it; the round trip through a run's logged params; is_hard."""

from __future__ import annotations

import dataclasses

import pytest

from tune.reporting.records import TrialRecord
from tune.settings.config import TrainConfig
from tune.settings.policy import Adapter, Policy
from tune.training.policy import plan, trial_policy

CFG = TrainConfig(epochs=10)
COUNTS = [5] * 7  # six blocks and the head, each with parameters
WINDOW = (0, 1, 4, 5)  # what the window [2, 4) freezes on COUNTS

# name: (frozen blocks, window, config changes, adapter (rank, alpha, dropout) or None, freeze_range, label)
CASES = {
    "hard": ((0, 1, 2), None, {}, None, "[0, 3)", "[0, 3)"),
    "none": ((), None, {}, None, "[0, 0)", "[0, 0)"),
    "set": ((0, 2), None, {}, None, "{0, 2}", "{0, 2}"),
    "window": (WINDOW, (2, 4), {}, None, "{0, 1, 4, 5}", "train [2, 4)"),
    "window_to_head": ((0, 1), (2, 6), {}, None, "[0, 2)", "[0, 2)"),
    "decay": ((0, 1, 2), None, {"layer_decay": 0.7}, None, "[0, 3)", "[0, 3) decay 0.7"),
    "decay_on_the_head_alone": ((0, 1, 2, 3, 4, 5), None, {"layer_decay": 0.6}, None, "[0, 6)", "[0, 6)"),
    "thaw": ((0, 1, 2, 3, 4), None, {"unfreeze_epoch": 2}, None, "[0, 5)", "[0, 5) thaw@2"),
    "thaw_every": ((0, 1, 2, 3, 4), None, {"unfreeze_epoch": 2, "unfreeze_every": 1}, None, "[0, 5)",
                   "[0, 5) thaw@2 every 1"),
    "thaw_decay": ((0, 1, 2, 3, 4), None, {"unfreeze_epoch": 2, "layer_decay": 0.7}, None, "[0, 5)",
                   "[0, 5) thaw@2 decay 0.7"),
    "thaw_after_the_last_epoch": ((0, 1, 2), None, {"unfreeze_epoch": 10}, None, "[0, 3)", "[0, 3)"),
    "lora": ((0, 1, 2), None, {"adapter": "lora"}, (8, 16.0, 0.0), "[0, 3)", "[0, 3) lora r8"),
    "lora_alpha_dropout": ((0, 1, 2), None, {"adapter": "lora", "lora_rank": 4, "lora_alpha": 32.0,
                                             "lora_dropout": 0.1}, (4, 32.0, 0.1), "[0, 3)",
                           "[0, 3) lora r4 alpha 32 dropout 0.1"),
    "window_lora": (WINDOW, (2, 4), {"adapter": "lora"}, (8, 16.0, 0.0), "{0, 1, 4, 5}", "train [2, 4) lora r8"),
    "window_decay_lora": (WINDOW, (2, 4), {"layer_decay": 0.5, "adapter": "lora", "lora_rank": 16, "lora_alpha": 8.0,
                                           "lora_dropout": 0.05}, (16, 8.0, 0.05), "{0, 1, 4, 5}",
                          "train [2, 4) decay 0.5 lora r16 alpha 8 dropout 0.05"),
}
HARD = {"hard", "none", "set", "window_to_head", "decay_on_the_head_alone", "thaw_after_the_last_epoch"}


def _planned(name: str) -> Policy:
    frozen, window, changes, adapter, _, _ = CASES[name]
    return plan(COUNTS, frozen, dataclasses.replace(CFG, **changes), window=window,
                adapted=adapter is not None).policy


@pytest.mark.parametrize("name", CASES)
def test_each_kind_of_policy_has_the_label_runs_are_named_by(name):
    """The texts below are the names a trial's run and its ``policy`` / ``freeze_range`` params carry."""
    _, _, _, adapter, freeze_range, label = CASES[name]
    policy = _planned(name)
    assert (policy.freeze_range, policy.label) == (freeze_range, label)
    assert (policy.adapter is not None) == (adapter is not None)
    if adapter is not None:
        assert (policy.adapter.rank, policy.adapter.alpha, policy.adapter.dropout) == adapter


@pytest.mark.parametrize("name", CASES)
def test_a_policy_comes_back_from_the_params_its_run_logged(name):
    """Policy → the params MLflow holds (strings) → a record's Policy: the same data, so the same label."""
    policy = _planned(name)
    logged = {key: str(value) for key, value in policy.params().items()}  # MLflow keeps str(value)
    assert (logged["policy"], logged["freeze_range"]) == (policy.label, policy.freeze_range)
    record = TrialRecord(run_id="r", name="r", status="FINISHED", params={"lr": "0.01", **logged}, tags={},
                         metrics={"freeze_start": 0.0, "freeze_stop": 6.0})
    assert record.policy == policy and Policy.from_params(policy.params()) == policy


@pytest.mark.parametrize("name", CASES)
def test_a_hard_freeze_is_its_frozen_blocks_and_nothing_more(name):
    policy = _planned(name)
    assert policy.is_hard == (name in HARD)
    assert policy.is_hard == (policy.label == policy.freeze_range)  # a hard freeze goes by its frozen blocks


def test_a_window_is_not_hard_but_the_window_that_reaches_the_head_is_the_hard_freeze_it_equals():
    assert not Policy(frozen=WINDOW, window=(2, 4)).is_hard
    reaches = trial_policy((0, 1), (2, 6), CFG)
    assert reaches == Policy(frozen=(0, 1)) and reaches.is_hard and reaches.window is None
    assert not Policy(frozen=(0, 1), adapter=Adapter()).is_hard and not Policy(thaw=1).is_hard


def test_a_run_without_the_policys_params_gets_the_policy_its_config_params_ask_for():
    """A record whose run logged its config and frozen range but none of the ``policy.`` params."""
    record = TrialRecord(run_id="r", name="r", status="FINISHED", tags={},
                         params={"freeze_stop": "3", "layer_decay": "0.7", "unfreeze_epoch": "2", "epochs": "10"})
    assert record.policy == Policy(frozen=(0, 1, 2), decay=0.7, thaw=2)
    assert record.policy.label == "[0, 3) thaw@2 decay 0.7"
