"""LoRA on the frozen range (train.adapter: lora, tune.training.adapter): the adapted modules and only they train beside
the trained blocks, what the trial counts and logs, the merged model, resume, and the refusals before any trial."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from conftest import make_tiny_task, resumed_epochs, tiny_block_model
from torch import nn

import run_search
from tune.blocks import BlockModel
from tune.driver import cluster
from tune.driver.checks import StudyOptions, check_config
from tune.errors import ConfigError
from tune.settings.config import TrainConfig
from tune.settings.loading import load_config
from tune.tasks import Task
from tune.training.train import LoopTrial
from tune.training.trial import model_from_checkpoint

pytest.importorskip("peft", reason="the lora extra (peft) is not installed")


def _cfg(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(epochs=2, batch_size=8, lr=1e-2, head_init="zero", seed=1, adapter="lora",
                                           lora_rank=2, freeze_stop=2), **changes)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def test_the_adapters_and_the_trained_blocks_train_and_the_adapted_base_weights_stay_bit_identical(tiny_task):
    trial = LoopTrial(tiny_task, _cfg())
    before = _snapshot(trial.model)
    trial.run_epoch()  # 6 steps: the adapters' B leaves zero at the first, A moves from the second
    after = trial.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    adapters = {n for n in before if "lora_" in n}
    assert adapters == {f"blocks.{b}.0.lora_{ab}.default.weight" for b in (0, 1) for ab in "AB"}  # the two convs
    trained = {n for n in before if n.startswith(("blocks.2.2.", "blocks.3."))}
    assert changed == adapters | trained  # base weights and BatchNorm statistics of blocks 0-1: bit-identical
    optimised = {id(p) for g in trial.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in trial.model.parameters() if p.requires_grad}
    names = {id(p): n for n, p in trial.model.named_parameters()}
    assert {names[i] for i in optimised} == adapters | {n for n in trained if "running" not in n and "num_" not in n}


def test_a_lora_trial_counts_its_adapters_as_trainable_is_labelled_and_caches_no_prefix(tiny_task):
    trial = LoopTrial(tiny_task, _cfg())
    model = trial.model
    adapter_count = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("blocks.0.", "blocks.1."))
               and "lora_" not in n)
    summary = trial.summary
    assert adapter_count == 2 * (1 * 9 + 4) + 2 * (4 * 9 + 8)  # rank 2: A (rank x in x 3 x 3), B (out x rank)
    assert (summary.adapter_params, summary.frozen_params) == (adapter_count, base)
    assert summary.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.frozen_flops_share == 0  # the backward pass runs through every adapted block
    assert trial.plan.label == "[0, 2) lora r2"
    assert trial.prefix_cache == "off: LoRA adapters train in the frozen blocks"
    plain = LoopTrial(tiny_task, _cfg(adapter="none", prefix_cache="off"))
    assert plain.plan.label == "[0, 2)" and plain.summary.adapter_params == 0
    assert plain.summary.frozen_params == base and plain.summary.frozen_flops_share > 0
    assert LoopTrial(tiny_task, _cfg(lora_alpha=4, lora_dropout=0.1)).plan.label == "[0, 2) lora r2 alpha 4 dropout 0.1"
    assert LoopTrial(tiny_task, _cfg(freeze_stop=0)).plan.label == "[0, 0)"  # nothing frozen, nothing adapted


def test_the_adapters_dropout_trains_inside_the_frozen_blocks(tiny_task):
    trial = LoopTrial(tiny_task, _cfg(lora_dropout=0.5))
    trial.frozen.train_mode()
    dropouts = [m for n, m in trial.model.named_modules() if "lora_dropout.default" in n]
    assert len(dropouts) == 2 and all(m.training for m in dropouts)
    assert not trial.model.blocks[0][1].training  # the frozen BatchNorm stays in eval


class _Checkpoint:
    def __init__(self, folder) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def as_directory(self):
        yield self.folder


def test_the_registered_model_is_the_adapted_one_merged_into_a_plain_module(tiny_task, tmp_path):
    trial = LoopTrial(tiny_task, _cfg())
    trial.run_epoch()
    torch.save(trial.state_dict(), tmp_path / "trial.pt")
    merged, _ = model_from_checkpoint(tiny_task, _Checkpoint(tmp_path))
    batch = tiny_task.val_data[0]
    trial.model.eval()
    with torch.no_grad():
        want, have = trial.model(batch), merged.module(batch)
    assert torch.allclose(want, have, atol=1e-5, rtol=1e-5)
    fresh = tiny_block_model().module
    assert [n for n, _ in merged.module.named_parameters()] == [n for n, _ in fresh.named_parameters()]
    assert [type(m) for m in merged.module.modules()] == [type(m) for m in fresh.modules()]
    assert not hasattr(merged.module, "peft_config")
    assert not torch.equal(merged.module.blocks[0][0].weight, fresh.blocks[0][0].weight)  # the adapter, folded in


def test_a_lora_trial_resumed_from_its_checkpoint_reports_what_the_uninterrupted_one_does(tiny_task, tmp_path):
    cfg = _cfg(epochs=3)
    whole = [m["val_loss"] for m in LoopTrial(tiny_task, cfg).epochs()]
    resumed = [m["val_loss"] for m in resumed_epochs(tiny_task, cfg, tmp_path, after=1)]
    assert resumed == whole


@pytest.mark.parametrize(("override", "key"), [
    (("train.lora_rank", 0), "train.lora_rank"),
    (("train.lora_alpha", 0), "train.lora_alpha"),
    (("train.lora_alpha", -1.0), "train.lora_alpha"),
    (("train.lora_dropout", 1.0), "train.lora_dropout"),
    (("train.adapter", "qlora"), "train.adapter"),
    (("space.lora_rank", {"type": "float", "low": 2, "high": 8}), "space.lora_rank.low"),  # a float
    (("space.lora_rank", {"type": "choice", "values": [0, 4]}), "space.lora_rank.values[0]"),
    (("space.layer_decay", {"type": "choice", "values": [1.0, 0.8]}), "space.layer_decay"),
    (("train.unfreeze_epoch", 1), "train.unfreeze_epoch"),
])
def test_bad_lora_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as caught:
        load_config("digits_lora", [override])
    assert caught.value.key == key


@pytest.mark.parametrize(("value", "expected"), [
    ("train.lora_rank=0", "error: train.lora_rank: got 0 (int); allowed: an integer >= 1"),
    ("train.lora_alpha=0", "error: train.lora_alpha: got 0 (int); allowed: a number > 0"),
])
def test_bad_lora_values_exit_2_on_the_cli_in_one_line(value, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cluster, "init_ray", lambda *a, **k: pytest.fail("Ray was started for bad input"))
    code = run_search.main(["--space", "digits_lora", "--set", value])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(expected), err


def _options(task, **train) -> StudyOptions:
    space = {"name": "lora_check", "train": {"epochs": 2, "adapter": "lora", **train},
             "space": {"freeze_stop": {"type": "int", "low": 0, "high": 2}}}
    return StudyOptions(space_file=space, task=task, tracking_uri="sqlite:///unused.db")


def test_a_task_with_its_own_trainer_refuses_lora_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = make_tiny_task()
    own = dataclasses.replace(tiny, name="own", make_trial=lambda task, cfg, device: None)  # as the yolo task
    with pytest.raises(ConfigError) as caught:
        check_config(_options(lambda: own))
    assert caught.value.key == "train.adapter" and "none with the own task" in str(caught.value)
    assert "\n" not in str(caught.value)


class _NormFirst(nn.Module):
    """A first block with no Linear or Conv2d (a norm over the inputs), then two linear blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Flatten(), nn.LayerNorm(64)), nn.Linear(64, 8), nn.Linear(8, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _norm_first_task() -> Task:
    def build() -> BlockModel:
        model = _NormFirst()
        return BlockModel(module=model, blocks=list(model.blocks), block_names=["norm", "fc", "head"], cut_points={},
                          example_input=torch.zeros(2, 1, 8, 8), sequential=True)

    return dataclasses.replace(make_tiny_task(), build_model=build)


def test_a_range_with_no_module_to_adapt_is_refused_before_any_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        check_config(_options(_norm_first_task))  # freeze_stop 1 would adapt the norm block alone
    assert caught.value.key == "train.adapter" and "the frozen blocks norm hold no Linear or Conv2d" in str(
        caught.value)


def test_lora_trials_are_policies_on_the_frontier_and_the_best_hard_freeze_stays_a_candidate():
    from test_policy import _policy_record

    from tune.reporting.analysis import candidates
    from tune.reporting.report import build_report
    from tune.settings.config import ReportConfig
    from tune.settings.policy import Adapter

    records = [_policy_record("lora", 3, "[0, 3) lora r4", [0.93], 1.2, adds={"adapter": Adapter("lora", 4)},
                              adapter="lora", lora_rank="4"),
               _policy_record("lora8", 5, "[0, 5) lora r8", [0.925], 1.1, adds={"adapter": Adapter("lora", 8)},
                              adapter="lora", lora_rank="8"),
               _policy_record("hard", 3, "[0, 3)", [0.80], 0.5, adapter="none", lora_rank="8")]
    searched = ["freeze_stop", "adapter", "lora_rank", "lr"]
    built = build_report(records, searched=searched, objectives=[("score", "max")], tolerance=0.01,
                         cost="epoch_time_s")
    assert "By policy:" in built.text
    header = next(line for line in built.text.splitlines() if line.split()[:2] == ["trial", "policy"])
    assert "adapter" not in header and "lora_rank" not in header  # the label names them
    assert "hard" in candidates(records, ReportConfig(tolerance=0.01), searched, top=2)


@pytest.mark.slow
def test_a_lora_search_logs_each_trial_by_its_label_with_its_adapter_params_and_registers_a_plain_model(
        ray_runtime, tmp_path):
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient
    from test_search import _runs, _search

    code, uri = _search(tmp_path, "--space", "digits_lora", "--confirm", "2", "--set", "search.num_samples=5",
                        "--set", "search.points_to_evaluate=[{adapter: lora, freeze_stop: 6}, {adapter: none, "
                        "freeze_stop: 6}]")
    assert code == 0
    parent, children = _runs(uri, "digits_lora")
    adapted = 0
    for child in children:
        params = child.data.params
        lora = params["adapter"] == "lora" and params["freeze_range"] != "[0, 0)"
        assert params["policy"] == params["freeze_range"] + (f" lora r{params['lora_rank']}" if lora else "")
        assert child.info.run_name.startswith(params["policy"] + " lr=")
        assert (int(params["adapter_params"]) > 0) == lora
        assert child.data.tags["prefix_cache"].startswith("off: LoRA") == lora
        adapted += lora
    assert adapted >= 1
    MlflowClient(tracking_uri=uri).get_run(parent.info.run_id)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(parent.data.tags["registered_model_uri"])
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_a_hugging_face_encoders_layers_get_adapters_on_their_linears_and_merge_back_to_its_own_names():
    transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    from tune.blocks import encoder_blocks
    from tune.training import adapter
    from tune.training.freeze import freeze_model

    def build() -> BlockModel:
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                         intermediate_size=32, num_labels=3)
        example = {"input_ids": torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))}
        return encoder_blocks(transformers.BertForSequenceClassification(config), example)

    frozen = freeze_model(build(), _cfg(freeze_stop=3))  # the embeddings (no Linear) and layers 0-1
    model = frozen.module
    assert frozen.adapters.blocks == (1, 2)
    assert frozen.adapters.targets[:2] == ("bert.encoder.layer.0.attention.self.query",
                                           "bert.encoder.layer.0.attention.self.key")
    assert len(frozen.adapters.targets) == 12  # q, k, v, attention output, intermediate, output: in each layer
    assert {frozen.block_model.param_blocks[n] for n, p in model.named_parameters() if "lora_" in n} == {1, 2}
    with torch.no_grad():
        for param in frozen.adapters.params:
            param.normal_()  # a trained adapter
    model.eval()
    example = frozen.block_model.example_input
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    merged = adapter.merged(build(), weights, frozen.adapters.state()).module.eval()
    with torch.no_grad():
        assert torch.allclose(model(**example).logits, merged(**example).logits, atol=1e-5)
    assert [n for n, _ in merged.named_parameters()] == [n for n, _ in build().module.named_parameters()]


def test_beside_a_trained_window_the_adapters_go_on_every_frozen_block_around_it(tiny_task):
    """``train [1, 2) lora r2``: block 1 and the head train in full, blocks 0 and 2 (frozen around the window) carry
    the adapters, their base weights untouched."""
    trial = LoopTrial(tiny_task, _cfg(freeze_stop=None, train_start=1, train_stop=2))
    before = _snapshot(trial.model)
    trial.run_epoch()
    after = trial.model.state_dict()
    adapted = {int(n.split(".")[1]) for n in before if "lora_" in n}
    assert adapted == {0, 2} and trial.plan.label == "train [1, 2) lora r2"
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    bases = {n for n in before if n.startswith(("blocks.0.", "blocks.2.")) and "lora_" not in n}
    assert not changed & bases and any(n.startswith("blocks.1.") for n in changed)
