"""One trial in pure torch: the metrics it yields, the exact CPU memory count, resuming from a checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import resumed_epochs
from torch import nn

from tune.blocks import BlockModel
from tune.settings.config import TrainConfig
from tune.tasks.base import Task, classification_metrics
from tune.training import measure
from tune.training.prefix_cache import SharedPrefixCache
from tune.training.train import LoopTrial
from tune.training.trial import METRIC_KEYS


def test_every_epoch_yields_the_common_metric_names(tiny_task):
    epochs = list(LoopTrial(tiny_task, TrainConfig(epochs=3, batch_size=8, lr=1e-2, freeze_stop=1)).epochs())
    assert [m["epoch"] for m in epochs] == [1, 2, 3]
    for metrics in epochs:
        assert set(METRIC_KEYS) <= set(metrics)
        assert metrics["score"] == metrics["val_accuracy"]
        assert metrics["mem_source"] == "model"
        assert metrics["freeze_stop"] == 1 and metrics["frozen_params"] > 0
    assert epochs[-1]["train_time_s"] == pytest.approx(sum(m["epoch_time_s"] for m in epochs))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]  # the trainable blocks learn


def _linear_task(batch: int) -> Task:
    def build() -> BlockModel:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False))
        return BlockModel(module=model, blocks=list(model), block_names=["a", "b"], cut_points={},
                          example_input=torch.zeros(2, 8))

    x, y = torch.randn(batch, 8), torch.randint(0, 4, (batch,))
    return Task(name="linear", build_model=build, train_data=(x, y), val_data=(x, y), metric="neg_loss",
                loss=lambda out, target: out.sum(),
                evaluate=lambda model, inputs, targets: {"neg_loss": 0.0, "val_loss": 0.0})


@pytest.mark.parametrize(("freeze_stop", "saved_activations"), [
    (0, (32 * 8 + 32 * 16) * 4),  # both layers save their input for their weight's gradient
    (1, 32 * 16 * 4),  # the frozen first layer records nothing: only the second saves its input
])
def test_cpu_peak_memory_is_an_exact_count(freeze_stop, saved_activations):
    trial = LoopTrial(_linear_task(batch=32), TrainConfig(epochs=1, batch_size=32, optimizer="sgd", momentum=0.9,
                                                      freeze_stop=freeze_stop))
    metrics = next(trial.epochs())
    params = (8 * 16 + 16 * 4) * 4
    trainable = (16 * 4 + (8 * 16 if freeze_stop == 0 else 0)) * 4
    # parameters + gradients + one momentum buffer per trainable parameter + saved activations
    expected = params + trainable + trainable + saved_activations
    assert metrics["peak_mem_mb"] * measure.MB == pytest.approx(expected, abs=1e-6)


def test_deeper_freeze_needs_less_training_memory(tiny_task):
    configs = [TrainConfig(epochs=1, freeze_stop=k, prefix_cache="off") for k in range(4)]
    memory = [next(LoopTrial(tiny_task, cfg).epochs())["peak_mem_mb"] for cfg in configs]
    assert memory == sorted(memory, reverse=True) and memory[0] > memory[-1]


def test_a_resumed_trial_continues_exactly_where_it_stopped(tiny_task, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=8, lr=1e-2, freeze_stop=1, seed=3)
    straight = list(LoopTrial(tiny_task, cfg).epochs())

    first = LoopTrial(tiny_task, cfg)
    head = [next(first.epochs()) for _ in range(2)]
    torch.save(first.state_dict(), tmp_path / "trial.pt")
    resumed = LoopTrial(tiny_task, cfg)
    resumed.load_state_dict(torch.load(tmp_path / "trial.pt", weights_only=True))
    tail = list(resumed.epochs())

    assert [m["epoch"] for m in head + tail] == [1, 2, 3, 4]
    for expected, got in zip(straight, head + tail, strict=True):
        for key in ("score", "val_loss", "train_loss"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert tail[-1]["train_time_s"] > head[-1]["train_time_s"]


def test_cached_prefix_trains_exactly_like_the_full_model(tiny_task):
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, freeze_stop=2, seed=1)
    cached, full = LoopTrial(tiny_task, cfg), LoopTrial(tiny_task, dataclasses.replace(cfg, prefix_cache="off"))
    assert (cached.prefix_cache, full.prefix_cache) == ("on", "off: off in the config")
    for with_cache, without in zip(cached.epochs(), full.epochs(), strict=True):
        assert with_cache["prefix_cache"] == "on"
        for key in ("train_loss", "val_loss", "score"):
            assert with_cache[key] == pytest.approx(without[key], rel=1e-5, abs=1e-7), key
    for (name, a), (_, b) in zip(cached.model.named_parameters(), full.model.named_parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def test_trials_with_the_same_prefix_share_its_outputs_and_train_exactly_as_alone(tiny_task, tmp_path, monkeypatch):
    shared = SharedPrefixCache(tmp_path / "prefix_cache")
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, freeze_stop=2, seed=1)
    first = LoopTrial(tiny_task, cfg, shared_cache=shared)
    assert first.prefix_cache == "on (shared, computed)"
    assert len(list((tmp_path / "prefix_cache").glob("*.pt"))) == 1
    import tune.training.prefix_cache

    def no_compute(*args, **kwargs):
        raise AssertionError("the prefix was computed again")

    monkeypatch.setattr(tune.training.prefix_cache, "_outputs", no_compute)
    other_lr = dataclasses.replace(cfg, lr=3e-3)
    second = LoopTrial(tiny_task, other_lr, shared_cache=shared)  # another trial, same prefix: loaded, not computed
    assert second.prefix_cache == "on (shared, loaded)"
    monkeypatch.undo()
    alone = LoopTrial(tiny_task, other_lr)
    for shared_epoch, alone_epoch in zip(second.epochs(), alone.epochs(), strict=True):
        for key in ("train_loss", "val_loss", "score"):
            assert shared_epoch[key] == pytest.approx(alone_epoch[key], rel=1e-6, abs=1e-9), key
    # another depth, other weights or other data: another key, computed again
    LoopTrial(tiny_task, dataclasses.replace(cfg, freeze_stop=1), shared_cache=shared)
    block_model = tiny_task.build_model()
    prefix = torch.nn.Sequential(*block_model.blocks[:2])
    x = tiny_task.train_data[0]
    weights = prefix.state_dict().items()
    keys = {shared.key(weights, 2, x), shared.key(weights, 1, x), shared.key(weights, 2, x + 1)}
    with torch.no_grad():
        block_model.blocks[0][0].weight.add_(1)
    keys.add(shared.key(prefix.state_dict().items(), 2, x))
    assert len(keys) == 4
    assert len(list((tmp_path / "prefix_cache").glob("*.pt"))) == 2
    assert not list((tmp_path / "prefix_cache").glob(".*.tmp"))  # written whole, renamed into place


class _WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1)), nn.Linear(8, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[1](self.blocks[0](x))


def _dropout_task() -> Task:
    def build() -> BlockModel:
        model = _WithDropout()
        return BlockModel(module=model, blocks=list(model.blocks), block_names=["a", "b"], cut_points={},
                          example_input=torch.zeros(2, 8), sequential=True)

    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    return Task(name="dropout", build_model=build, train_data=(x, y), val_data=(x, y), metric="val_accuracy",
                loss=torch.nn.functional.cross_entropy, evaluate=classification_metrics)


@pytest.mark.parametrize(("task_factory", "changes", "reason"), [
    ("tiny", {"freeze_stop": 0}, "nothing frozen"),
    ("tiny", {"freeze": (1,)}, "the frozen blocks are not a prefix"),
    ("tiny", {"freeze_stop": 2, "frozen_bn": "train"}, "frozen BatchNorm updates its statistics (frozen_bn: train)"),
    ("tiny", {"freeze_stop": 2, "prefix_cache": "off"}, "off in the config"),
    ("augmenting", {"freeze_stop": 2}, "the task augments its inputs"),
    ("dropout", {"freeze_stop": 1, "frozen_dropout": "train"}, "dropout in the frozen prefix (frozen_dropout: train)"),
    ("tiny", {"freeze_stop": 2, "prefix_cache_max_mb": 0.001}, "the cached training outputs would take 0 MB "
                                                                "(train.prefix_cache_max_mb: 0.001)"),
    ("linear", {"freeze_stop": 1}, "the model is not a plain sequence of blocks"),
])
def test_the_cache_turns_itself_off_where_it_would_not_be_exact(tiny_task, task_factory, changes, reason):
    task = {"tiny": tiny_task, "augmenting": dataclasses.replace(tiny_task, augments=True),
            "dropout": _dropout_task(), "linear": _linear_task(batch=8)}[task_factory]
    trial = LoopTrial(task, dataclasses.replace(TrainConfig(epochs=1), **changes))
    assert trial.prefix_cache == f"off: {reason}"
    assert next(trial.epochs())["prefix_cache"] == f"off: {reason}"


def test_warmup_and_linear_decay_follow_the_fine_tuning_schedule_and_resume_exactly(tiny_task, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, lr_schedule="linear", warmup=0.2, optimizer="adamw", seed=1,
                      freeze_stop=1, prefix_cache="off")
    trial = LoopTrial(tiny_task, cfg)
    used = []
    trial.optimizer.register_step_pre_hook(lambda optimizer, *args: used.append(optimizer.param_groups[0]["lr"]))
    straight = list(trial.epochs())
    per_epoch = -(-len(tiny_task.train_data[0]) // 8)
    total = 3 * per_epoch
    warm = int(0.2 * total)
    expected = [1e-2 * ((k + 1) / (warm + 1) if k < warm else (total - k) / (total - warm)) for k in range(total)]
    assert len(used) == total and used == pytest.approx(expected)
    assert max(used) == pytest.approx(1e-2) and used[0] < used[warm] and used[-1] < used[warm] / 2
    for want, have in zip(straight, resumed_epochs(tiny_task, cfg, tmp_path), strict=True):
        assert have["train_loss"] == want["train_loss"] and have["score"] == want["score"]
    constant = LoopTrial(tiny_task, dataclasses.replace(cfg, lr_schedule="constant", warmup=0.0))
    assert constant.schedule is None and "schedule" not in constant.state_dict()


def test_frozen_dropout_is_off_by_default_so_the_cache_trains_as_the_whole_model_does():
    task = _dropout_task()
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, freeze_stop=1, seed=3)
    cached, whole = LoopTrial(task, cfg), LoopTrial(task, dataclasses.replace(cfg, prefix_cache="off"))
    assert cached.prefix_cache == "on"
    whole.frozen.train_mode()
    assert not whole.model.blocks[0][1].training and whole.model.blocks[1].training
    for a, b in zip(cached.epochs(), whole.epochs(), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    dropping = LoopTrial(task, dataclasses.replace(cfg, frozen_dropout="train", prefix_cache="off"))
    dropping.frozen.train_mode()
    assert dropping.model.blocks[0][1].training


@pytest.mark.parametrize(("optimizer", "freeze_stop", "prefix_cache"),
                         [("sgd", 0, "auto"), ("adamw", 2, "off"), ("adamw", 2, "auto"), ("sgd", 3, "auto")])
def test_the_memory_measurement_gives_epoch_1s_peak_after_one_optimizer_step(tiny_task, optimizer, freeze_stop,
                                                                         prefix_cache):
    cfg = TrainConfig(batch_size=8, epochs=1, optimizer=optimizer, freeze_stop=freeze_stop, prefix_cache=prefix_cache)
    probe = LoopTrial(tiny_task, cfg, torch.device("cpu"))
    steps = []
    probe.optimizer.register_step_post_hook(lambda *args: steps.append(1))
    probed = probe.measure_memory()
    assert len(steps) == 1  # one batch of the epoch's 6
    assert probed == next(LoopTrial(tiny_task, cfg, torch.device("cpu")).epochs())["peak_mem_mb"]


def test_gpu_shares_follow_the_measured_memory_by_depth(tiny_task, monkeypatch):
    from tune.driver.resources import gpu_shares

    def no_epoch(*args, **kwargs):
        raise AssertionError("a whole epoch was trained: shares come from one optimizer step")

    monkeypatch.setattr(LoopTrial, "run_epoch", no_epoch)

    freezes = {tuple(range(k)): {"freeze": None, "freeze_start": 0, "freeze_stop": k} for k in range(4)}
    freezes[(1,)] = {"freeze": [1], "freeze_start": 0, "freeze_stop": None}  # not a prefix: measured all the same
    shares = gpu_shares(tiny_task, TrainConfig(batch_size=8, prefix_cache="off"), freezes, full_share=1.0)
    by_depth = [shares[tuple(range(k))] for k in range(4)]
    assert by_depth[0] == 1.0
    assert by_depth[3] < by_depth[0] and by_depth == sorted(by_depth, reverse=True)
    assert shares[(1,)] < 1.0
    assert all(abs(round(v * 20) - v * 20) < 1e-9 and 0.05 <= v <= 1.0 for v in shares.values())



def test_a_tasks_own_trial_must_implement_the_trial_protocol(tiny_task):
    from types import SimpleNamespace

    from tune.training.train import make_trial

    incomplete = SimpleNamespace(epoch=0, device=torch.device("cpu"), run=print, state_dict=dict,
                                 load_state_dict=print)  # no measure_memory
    task = dataclasses.replace(tiny_task, make_trial=lambda task, cfg, device=None: incomplete)
    with pytest.raises(TypeError, match=r"^task 'tiny': make_trial gave a SimpleNamespace without measure_memory"):
        make_trial(task, TrainConfig())
    assert isinstance(make_trial(tiny_task, TrainConfig(freeze_stop=1)), LoopTrial)


def test_a_tasks_own_trial_may_name_its_memory_measurement_probe_memory(tiny_task):
    """A trial of a task's own that names its measurement ``probe_memory()`` is built and measured through it."""
    from types import SimpleNamespace

    from tune.training.train import make_trial, trial_memory

    own = SimpleNamespace(epoch=0, device=torch.device("cpu"), run=print, state_dict=dict, load_state_dict=print,
                          probe_memory=lambda: 12.5)
    task = dataclasses.replace(tiny_task, make_trial=lambda task, cfg, device=None: own)
    assert make_trial(task, TrainConfig()) is own
    assert trial_memory(task, TrainConfig(), {"freeze_stop": 1}) == 12.5


# -- precision: as users train on a GPU; on the CPU autocast runs bfloat16 ------------------------------------------
def _interrupted(task, cfg, folder, after: int = 1) -> list[dict]:
    """A trial checkpointed after ``after`` epochs (loaded with weights_only) and resumed in a new trial."""
    first = LoopTrial(task, cfg)
    head = [next(first.epochs()) for _ in range(after)]
    torch.save(first.state_dict(), folder / "trial.pt")
    resumed = LoopTrial(task, cfg)
    resumed.load_state_dict(torch.load(folder / "trial.pt", weights_only=True))
    return head + list(resumed.epochs())


def test_auto_precision_is_float32_on_the_cpu_so_cpu_figures_do_not_change(tiny_task):
    trial = LoopTrial(tiny_task, TrainConfig(epochs=1))
    assert (trial.precision, trial.scaler, trial.channels_last) == ("32", None, False)
    metrics = next(trial.epochs())
    assert (metrics["precision"], metrics["channels_last"]) == ("32", "off")


def test_a_bf16_mixed_trial_trains_close_to_float32_and_leaves_frozen_weights_untouched(tiny_task):
    """CPU autocast in bfloat16 (8 bits of mantissa): over two epochs from the same seed the training loss stays
    within 5 % of float32's; the frozen block's parameters stay bit-identical; the activations saved for backward
    are counted in bfloat16, so the exact memory count falls."""
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, freeze_stop=1, seed=3, prefix_cache="off")
    full = list(LoopTrial(tiny_task, cfg).epochs())
    trial = LoopTrial(tiny_task, dataclasses.replace(cfg, precision="bf16-mixed"))
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters() if not p.requires_grad}
    mixed = list(trial.epochs())
    assert before and all(torch.equal(before[n], p) for n, p in trial.model.named_parameters() if n in before)
    assert [m["precision"] for m in mixed] == ["bf16-mixed"] * 2
    for a, b in zip(full, mixed, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
        assert b["peak_mem_mb"] < a["peak_mem_mb"]  # the same exact count (mem_source=model) in half the bytes


def test_a_bf16_mixed_trial_caches_its_prefix_in_its_precision_and_resumes_exactly(tiny_task, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, freeze_stop=2, seed=1, precision="bf16-mixed")
    cached = LoopTrial(tiny_task, cfg)
    uncached = LoopTrial(tiny_task, dataclasses.replace(cfg, prefix_cache="off"))
    assert cached.prefix_cache == "on" and cached.cached_features[0].dtype == torch.bfloat16
    straight = list(cached.epochs())
    for with_cache, without in zip(straight, uncached.epochs(), strict=True):
        assert with_cache["train_loss"] == pytest.approx(without["train_loss"], rel=1e-5)
    for expected, got in zip(straight, _interrupted(tiny_task, cfg, tmp_path), strict=True):
        assert (got["score"], got["train_loss"]) == (expected["score"], expected["train_loss"])
    # a float32 trial of the same prefix does not load the bfloat16 outputs (nor they its)
    weights, inputs = list(cached.frozen.module.state_dict().items()), tiny_task.train_data[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_key = SharedPrefixCache.key(weights, 2, inputs)
    assert mixed_key != SharedPrefixCache.key(weights, 2, inputs)


def test_a_16_mixed_trial_resumes_with_its_grad_scalers_state(tiny_task, tmp_path, monkeypatch):
    """16-mixed is CUDA's; its GradScaler runs on the CPU too when the refusal is lifted, which lets this test show
    that the scaler's state (its scale, backed off after skipped steps) travels in the checkpoint."""
    from tune.training import precision

    monkeypatch.setattr(precision, "resolve", lambda setting, device: setting)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-3, freeze_stop=1, seed=3, prefix_cache="off",
                      precision="16-mixed")
    trial = LoopTrial(tiny_task, cfg)
    straight = list(trial.epochs())
    assert trial.scaler.get_scale() < 2.0**16  # it backed off: the state matters after a resume
    for expected, got in zip(straight, _interrupted(tiny_task, cfg, tmp_path), strict=True):
        assert (got["score"], got["train_loss"]) == (expected["score"], expected["train_loss"])


def test_16_mixed_is_refused_on_the_cpu_in_one_line(tiny_task):
    from tune.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        LoopTrial(tiny_task, TrainConfig(epochs=1, precision="16-mixed"))
    assert str(err.value).startswith("train.precision: got '16-mixed'") and "\n" not in str(err.value)


def test_channels_last_changes_the_layout_not_the_numbers(tiny_task):
    task = tiny_task  # its net has 2-d convolutions
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, freeze_stop=1, seed=3, prefix_cache="off")
    plain = list(LoopTrial(task, cfg).epochs())
    trial = LoopTrial(task, dataclasses.replace(cfg, channels_last=True))
    conv = next(m for m in trial.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain, trial.epochs(), strict=True):
        assert b["channels_last"] == "on" and b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
