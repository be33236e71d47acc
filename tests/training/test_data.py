"""The task protocol for real data: datasets and loaders, blocks as parameter-name maps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import resumed_epochs
from torch import nn
from torch.utils.data import Dataset

from tune.blocks import BlockModel, layer_table
from tune.settings.config import TrainConfig
from tune.tasks.base import Task, classification_metrics
from tune.training.freeze import freeze_model
from tune.training.train import LoopTrial


class Shifted(Dataset):
    """The tiny task's images as a dataset; with ``augment`` each read shifts the image by a random pixel."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, augment: bool = False) -> None:
        self.images, self.targets, self.augment = images, targets, augment
        self.reads = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        image = self.images[index]
        if self.augment:
            image = torch.roll(image, shifts=int(torch.randint(-1, 2, ())), dims=-1)
        return image, self.targets[index]


def dataset_task(task: Task, augment: bool, num_workers: int = 0) -> Task:
    return dataclasses.replace(task, train_data=Shifted(*task.train_data, augment=augment),
                               val_data=Shifted(*task.val_data), augments=augment, num_workers=num_workers)


def test_a_dataset_task_trains_exactly_as_the_same_data_in_tensors(tiny_task):
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, freeze_stop=1, seed=2, prefix_cache="off")
    as_tensors = list(LoopTrial(tiny_task, cfg).epochs())
    as_dataset = list(LoopTrial(dataset_task(tiny_task, augment=False), cfg).epochs())
    for expected, got in zip(as_tensors, as_dataset, strict=True):
        for key in ("score", "val_loss", "train_loss"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key


def test_a_cached_prefix_over_a_dataset_trains_like_the_full_model(tiny_task):
    # head_init zero: a trial on its own would read the data once more to fit its linear probe
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, freeze_stop=2, seed=1, head_init="zero")
    task = dataset_task(tiny_task, augment=False)
    cached, full = LoopTrial(task, cfg), LoopTrial(task, dataclasses.replace(cfg, prefix_cache="off"))
    assert cached.prefix_cache == "on"
    reads = task.train_data.reads
    for with_cache, without in zip(cached.epochs(), full.epochs(), strict=True):
        assert with_cache["train_loss"] == pytest.approx(without["train_loss"], rel=1e-5, abs=1e-7)
        assert with_cache["score"] == pytest.approx(without["score"])
    assert reads == len(task.train_data)  # the cached trial read its training images once


# two worker processes start in seconds: the slow suite runs that case
@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_an_augmenting_shuffling_loader_resumes_exactly(tiny_task, tmp_path, num_workers):
    task = dataset_task(tiny_task, augment=True, num_workers=num_workers)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, freeze_stop=1, seed=5)
    straight = LoopTrial(task, cfg)
    assert straight.prefix_cache == "off: the task augments its inputs"
    expected = list(straight.epochs())
    got = resumed_epochs(task, cfg, tmp_path)
    assert [m["epoch"] for m in got] == [1, 2, 3]
    for want, have in zip(expected, got, strict=True):
        assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6, abs=1e-9)
        assert have["score"] == pytest.approx(want["score"])
    # the augmentation is real: another seed sees other images
    other = list(LoopTrial(task, dataclasses.replace(cfg, seed=6)).epochs())
    assert [m["train_loss"] for m in other] != [m["train_loss"] for m in expected]


def test_a_task_may_build_its_own_training_loader_and_step(tiny_task):
    seen = []

    def loader(batch_size, epoch, seed):
        seen.append((batch_size, epoch, seed))
        x, y = tiny_task.train_data
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]

    def step(model, batch):
        inputs, targets = batch
        return F.cross_entropy(model(inputs), targets, label_smoothing=0.1)

    task = dataclasses.replace(tiny_task, train_loader=loader, training_step=step, loss=None)
    trial = LoopTrial(task, TrainConfig(epochs=2, batch_size=16, freeze_stop=2, seed=4))
    assert trial.prefix_cache == "off: the task builds its own training loader"
    metrics = list(trial.epochs())
    assert seen == [(16, 0, 4), (16, 1, 4)]
    assert metrics[-1]["samples_per_s"] > 0 and len(metrics) == 2


class RootParams(nn.Module):
    """A ViT-like layout: a token and a position table on the root, a stem, two blocks, a norm and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 4))
        self.pos = nn.Parameter(torch.randn(4))
        self.stem = nn.Linear(4, 4)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) for _ in range(2)])
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x) + self.pos + self.token
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def root_params_model() -> BlockModel:
    module = RootParams()
    mapping = {"token": 0, "pos": 0, "stem.weight": 0, "stem.bias": 0, "head.weight": 3, "head.bias": 3}
    mapping.update({f"layers.{i}.{k}": i + 1 for i in range(2) for k in ("0.weight", "0.bias", "1.weight", "1.bias")})
    return BlockModel(module=module, param_blocks=mapping, block_names=["stem", "layers.0", "layers.1", "head"],
                      cut_points={}, example_input=torch.zeros(2, 4))


def test_root_level_parameters_freeze_with_their_block_and_bn_stays_in_eval():
    block_model = root_params_model()
    frozen = freeze_model(block_model, TrainConfig(freeze_stop=2))
    assert {name for name, p in block_model.module.named_parameters() if not p.requires_grad} == {
        "token", "pos", "stem.weight", "stem.bias", "layers.0.0.weight", "layers.0.0.bias", "layers.0.1.weight",
        "layers.0.1.bias"}
    frozen.train_mode()
    assert not block_model.module.layers[0][1].training and block_model.module.layers[1][1].training
    assert frozen.summary.frozen_params == 4 + 4 + 20 + 20 + 8
    assert [len(r) for r in block_model.roots] == [1, 1, 1, 1]  # the stem's top module; the root params have none
    table = layer_table(block_model)
    assert "Linear + params" in table.splitlines()[2]  # the stem: a module and root-level parameters


def test_every_parameter_must_belong_to_a_block():
    module = RootParams()
    with pytest.raises(ValueError, match="belong to no block, e.g. token"):
        BlockModel(module=module, param_blocks={"pos": 0}, block_names=["a", "b"], cut_points={},
                   example_input=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="two blocks"):
        BlockModel(module=module, blocks=[module.layers, module.layers[0]], block_names=["a", "b"], cut_points={},
                   example_input=torch.zeros(2, 4))


def test_classification_metrics_score_tensors_and_batches_alike(tiny_task):
    model = tiny_task.build_model().module
    x, y = tiny_task.val_data
    whole = classification_metrics(model, x, y)
    batched = classification_metrics(model, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert batched["val_accuracy"] == whole["val_accuracy"]
    assert batched["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-6)


class Awkward(nn.Module):
    """A tied weight, a BatchNorm without affine parameters and a dropout beside the conv they follow, blocks in a
    ModuleList (whose own forward never runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, affine=False)
        self.drop = nn.Dropout(0.5)
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.head = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)
        self.out.weight = self.head.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.bn(self.conv(x))).mean((2, 3))
        for layer in self.layers:
            x = layer(x)
        return self.out(self.head(x))


def awkward_model() -> BlockModel:
    module = Awkward()
    mapping = {name: 0 if name.startswith("conv") else 1 if name.startswith("layers") else 2
               for name, _ in module.named_parameters()}
    return BlockModel(module=module, param_blocks=mapping, block_names=["conv", "layers", "head"], cut_points={},
                      example_input=torch.zeros(2, 1, 8, 8))


def test_tied_weights_buffers_only_batchnorm_and_module_lists_find_their_blocks():
    from tune.blocks import block_flops
    from tune.training.prefix_cache import blocker

    block_model = awkward_model()
    assert "out.weight" not in block_model.param_blocks  # a tied weight is listed once, under its first name
    frozen = freeze_model(block_model, TrainConfig(freeze_stop=1))
    frozen.train_mode()
    assert not block_model.module.bn.training  # no parameters of its own: frozen with the conv before it
    before = block_model.module.bn.running_mean.clone()
    block_model.module(torch.randn(2, 1, 8, 8))
    assert torch.equal(before, block_model.module.bn.running_mean)
    assert any(isinstance(m, nn.Dropout) for m in block_model.modules_of([0]))
    assert blocker(frozen, augments=False) == "the model is not a plain sequence of blocks"
    conv, layers, head = block_flops(block_model)
    assert conv == 2 * 2 * 4 * 9 * 64 and layers == 2 * (2 * 2 * 16) and head == 2 * (2 * 2 * 16)


def test_a_module_called_inside_another_blocks_module_counts_for_its_own_block():
    from tune.blocks import block_flops

    class Body(nn.Module):
        def __init__(self, shared: nn.Module) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.calls = [shared]  # not a submodule: another block's, called from here (as CoaT shares one)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + self.calls[0](x)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Linear(4, 4)
            self.body = Body(self.pos)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    module = Outer()
    mapping = {"pos.weight": 0, "pos.bias": 0, "body.lin.weight": 1, "body.lin.bias": 1, "head.weight": 2,
               "head.bias": 2}
    block_model = BlockModel(module=module, param_blocks=mapping, block_names=["pos", "body", "head"],
                             cut_points={}, example_input=torch.zeros(3, 4))
    assert block_flops(block_model) == [2 * 3 * 16, 2 * 3 * 16, 2 * 3 * 8]


def test_a_tasks_splits_are_described_by_a_digest_that_follows_the_data(tmp_path):
    from types import SimpleNamespace

    from torchvision.datasets import ImageFolder

    from tune.tasks.digits import make_task
    from tune.tasks.image import write_example
    from tune.tracker.datasets import describe

    # tensors: the digest is the tensors'; another split seed, other training data, another digest
    first, again, other = (describe(make_task(split_seed=seed)) for seed in (0, 0, 1))
    assert [(d.split, d.name, d.rows) for d in first] == [("train", "digits-train", 200), ("val", "digits-val", 500),
                                                           ("test", "digits-test", 500)]
    assert first == again and first[0].digest != other[0].digest
    assert "load_digits" in first[0].source and "split_seed=0" in first[0].source
    assert [d.split for d in describe(make_task(test_size=0))] == ["train", "val"]  # no test split: none described

    # an image folder: its files' names and sizes; a file more or a file changed, another digest
    folder = write_example(tmp_path / "images", per_class=2, val_per_class=1, size=8)

    def image_task() -> SimpleNamespace:
        return SimpleNamespace(name="image", train_data=ImageFolder(folder / "train"),
                               val_data=ImageFolder(folder / "val"), test_data=None,
                               sources={s: str(folder / s) for s in ("train", "val", "test")})

    before = describe(image_task())
    assert [(d.split, d.rows) for d in before] == [("train", 20), ("val", 10)]
    extra = next((folder / "train" / "3").iterdir())
    extra.with_name("copy.png").write_bytes(extra.read_bytes())
    after = describe(image_task())
    assert after[0].digest != before[0].digest and after[0].rows == 21 and after[1] == before[1]
    # no data in memory (a task with its own trial): the split's folder, by file names and sizes
    folders = SimpleNamespace(name="yolo", sources={"train": str(folder / "train"), "val": str(folder / "val")})
    described = describe(folders)
    assert [(d.split, d.rows) for d in described] == [("train", 21), ("val", 10)]
    extra.write_bytes(extra.read_bytes() + b"\0")
    assert describe(folders)[0].digest != described[0].digest


def test_the_training_loader_is_built_once_and_each_samples_augmentation_is_the_same_with_any_workers(tiny_task):
    """One DataLoader per trial, its workers persisting from epoch to epoch (as users train), and each training
    sample's augmentation seeded from (seed, epoch, index): 0 or 2 workers train exactly alike (head_init zero: a
    trial on its own fits its probe on the task's training data, here augmented, through a loader of its own)."""
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, freeze_stop=1, seed=5, head_init="zero")
    in_process = list(LoopTrial(dataset_task(tiny_task, augment=True, num_workers=0), cfg).epochs())
    trial = LoopTrial(dataset_task(tiny_task, augment=True, num_workers=2), cfg)
    epochs, loaders, iterators = trial.epochs(), [], []
    with_workers = []
    for metrics in epochs:
        with_workers.append(metrics)
        loaders.append(trial._loader.loader)
        iterators.append(trial._loader.loader._iterator)
    assert len(set(map(id, loaders))) == 1 and iterators[0] is not None
    assert len(set(map(id, iterators))) == 1  # the same workers every epoch
    for a, b in zip(in_process, with_workers, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6, abs=1e-9)
