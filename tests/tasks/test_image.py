"""The image task: blocks read from timm and torchvision models, weights as libraries save them, training on an
image folder the tests write (UCI digits as PNGs), a search through its space file."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from conftest import parent_and_children, resumed_epochs
from mlflow import MlflowClient

import run_search
from tune.blocks import timm_blocks, torchvision_blocks
from tune.errors import ConfigError
from tune.settings.config import TrainConfig
from tune.tasks.image import make_task, write_example
from tune.training.train import LoopTrial

timm = pytest.importorskip("timm", reason="the image task needs timm (pip install -e '.[image]')")
torchvision = pytest.importorskip("torchvision", reason="the image task needs torchvision")

ROOT = Path(run_search.__file__).resolve().parent
SPACE = ROOT / "search_spaces" / "image_freeze.yaml"
EXAMPLE = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_example(tmp_path_factory.mktemp("images") / "digits", per_class=4, val_per_class=3, size=32)


def blocks_of(block_model) -> list[set[str]]:
    found: list[set[str]] = [set() for _ in range(block_model.n_blocks)]
    for name, index in block_model.param_blocks.items():
        found[index].add(name)
    return found


def names(module: torch.nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in module.named_parameters() if n.split(".")[0] in prefixes or n.startswith(prefixes)}


def test_a_timm_vit_puts_its_root_parameters_in_the_stem_and_its_final_norm_with_the_last_block():
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=3)
    block_model = timm_blocks(model, EXAMPLE)
    assert block_model.block_names == ["stem", "blocks.0", "blocks.1", "blocks.2+norm", "head"]
    stem, b0, b1, b2, head = blocks_of(block_model)
    assert stem == {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert b0 == names(model, "blocks.0.") and b1 == names(model, "blocks.1.")
    assert b2 == names(model, "blocks.2.") | {"norm.weight", "norm.bias"}
    assert head == {"head.weight", "head.bias"}
    assert block_model.named_cut_points() == {"none": 0, "stem": 1, "blocks.2": 4, "backbone": 4, "all_but_head": 4}


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_a_resnet_is_stem_four_layers_and_head_in_both_libraries(library):
    if library == "timm":
        model = timm.create_model("resnet18", num_classes=3)
        block_model = timm_blocks(model, EXAMPLE)
        stage_ends = {"layer1": 2, "layer2": 3, "layer3": 4, "layer4": 5}
    else:
        model = torchvision.models.resnet18(num_classes=3)
        block_model = torchvision_blocks(model, EXAMPLE)
        stage_ends = {}
    stem, *layers, head = blocks_of(block_model)
    assert stem == {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert layers == [names(model, f"layer{i}") for i in range(1, 5)]
    assert head == {"fc.weight", "fc.bias"}
    assert block_model.named_cut_points() == {"none": 0, "stem": 1, **stage_ends, "backbone": 5, "all_but_head": 5}


def test_torchvision_features_are_one_block_each_and_a_vit_keeps_its_class_token_in_the_stem():
    model = torchvision.models.mobilenet_v3_small(num_classes=3)
    block_model = torchvision_blocks(model, EXAMPLE)
    features = [f"features.{i}" for i in range(len(model.features))]
    assert block_model.block_names == [*features, "classifier"]
    assert blocks_of(block_model)[3] == names(model, "features.3.")
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=3)
    block_model = torchvision_blocks(vit, EXAMPLE)
    assert block_model.block_names == ["stem", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1",
                                       "encoder.ln", "heads"]
    assert blocks_of(block_model)[0] == {"class_token", "encoder.pos_embedding", "conv_proj.weight", "conv_proj.bias"}


def test_convnext_stages_and_its_norm_head():
    model = timm.create_model("convnext_atto", num_classes=3)
    block_model = timm_blocks(model, EXAMPLE)
    assert block_model.block_names == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]
    assert blocks_of(block_model)[-1] == names(model, "head.")  # its norm and fc: the head as timm groups it
    assert blocks_of(block_model)[2] == names(model, "stages.1.")


def test_frozen_weights_and_batchnorm_statistics_do_not_move_and_the_optimizer_holds_the_rest(folder):
    task = make_task(model="resnet18", data=str(folder), image_size=32, workers=0)
    trial = LoopTrial(task, TrainConfig(epochs=1, batch_size=8, lr=1e-2, freeze_stop=3, seed=0))
    assert trial.prefix_cache == "off: the model is not a plain sequence of blocks"
    frozen_names = {n for n, i in trial.frozen.block_model.param_blocks.items() if i < 3}
    before = {k: v.clone() for k, v in trial.model.state_dict().items()}
    in_optimizer = {id(p) for group in trial.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in trial.model.named_parameters() if n not in frozen_names}
    metrics = list(trial.epochs())
    after = trial.model.state_dict()
    frozen_state = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))]
    assert len(frozen_state) > 30 and all(torch.equal(before[k], after[k]) for k in frozen_state)
    assert not torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])
    assert not torch.equal(before["layer3.0.bn1.running_mean"], after["layer3.0.bn1.running_mean"])
    assert metrics[0]["frozen_params"] == sum(p.numel() for n, p in trial.model.named_parameters()
                                              if n in frozen_names)
    assert 0 <= metrics[0]["val_accuracy"] <= 1 and metrics[0]["samples_per_s"] > 0


@pytest.mark.slow  # 9 s: tests/test_data.py covers the seeded augmentation's resume in the fast suite
def test_an_augmenting_image_trial_resumes_exactly(folder, tmp_path):
    task = make_task(model="resnet10t", data=str(folder), image_size=32, workers=0, augment=True)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, freeze_stop=2, seed=3)
    straight = list(LoopTrial(task, cfg).epochs())
    got = resumed_epochs(task, cfg, tmp_path)
    for want, have in zip(straight, got, strict=True):
        assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert have["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)


def _saved(model: torch.nn.Module, path: Path, form: str) -> str:
    state = model.state_dict()
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path.with_suffix(".safetensors"))
        return str(path.with_suffix(".safetensors"))
    content = {"state_dict": state, "epoch": 3} if form == "timm checkpoint" else state
    if form == "pickled checkpoint":
        content = {"state_dict": state, "args": argparse.Namespace(lr=0.1)}
    if form == "torchvision EMA checkpoint":  # references/classification: an AveragedModel's state dict
        content = {"model": {}, "model_ema": {"n_averaged": torch.tensor(5), **{f"module.{k}": v
                                                                                 for k, v in state.items()}}}
    if form == "without num_batches_tracked":  # saved before torch 0.4.1
        content = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(content, path)
    return str(path)


@pytest.mark.parametrize("form", ["state dict", "safetensors", "timm checkpoint", "pickled checkpoint",
                                  "torchvision EMA checkpoint", "without num_batches_tracked"])
def test_weights_load_in_the_form_the_library_saved_them_with_a_new_head(folder, tmp_path, form):
    source = timm.create_model("resnet18", num_classes=1000)  # an ImageNet-shaped head: not the data's 10
    path = _saved(source, tmp_path / "w.pt", form)
    options = {"model": "resnet18", "data": str(folder), "weights": path, "image_size": 32, "workers": 0}
    if form == "pickled checkpoint":
        with pytest.raises(ConfigError, match=r"UnpicklingError.*only with task.options.trust_weights: true"):
            make_task(**options)
        options["trust_weights"] = True
    loaded = make_task(**options).build_model().module.state_dict()
    expected = source.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in loaded if not k.startswith("fc."))
    assert loaded["fc.weight"].shape == (10, 512)


@pytest.mark.parametrize(("model", "classifier", "kept"), [
    ("convnext_atto", "head.fc.", "head.norm.weight"),
    ("mobilenetv3_small_050", "classifier.", "conv_head.weight"),
    ("torchvision:mobilenet_v3_small", "classifier.3.", "classifier.0.weight"),
])
def test_a_new_head_replaces_the_classifier_only(folder, tmp_path, model, classifier, kept):
    from tune.tasks.image import block_model

    source = block_model(model, 1000).module
    with torch.no_grad():  # off their initial values (a norm starts at ones either way): a reload is seen
        for param in source.parameters():
            param.add_(torch.rand_like(param))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = make_task(model=model, data=str(folder), weights=str(tmp_path / "w.pt"), image_size=32,
                       workers=0).build_model().module.state_dict()
    assert torch.equal(loaded[kept], source.state_dict()[kept])  # the rest of the head block: pretrained
    assert {k for k in loaded if k not in source.state_dict() or loaded[k].shape != source.state_dict()[k].shape} \
        == {f"{classifier}weight", f"{classifier}bias"}


def test_models_with_auxiliary_heads_or_a_callable_group_matcher_still_give_blocks():
    from tune.blocks import timm_blocks
    from tune.tasks.image import block_model

    googlenet = block_model("torchvision:googlenet", 3, image_size=64).module.train()
    assert isinstance(googlenet(torch.zeros(2, 3, 64, 64)), torch.Tensor)  # no auxiliary outputs in training

    class Matched(torch.nn.Module):  # timm's inception_v3 gives its group matcher as a function
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Linear(4, 4)
            self.mid = torch.nn.Linear(4, 4)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.mid(self.stem(x)))

        def group_matcher(self, coarse=False):
            return lambda name: {"stem": 0, "mid": 1}.get(name.split(".")[0], 2)

    assert timm_blocks(Matched(), torch.zeros(1, 4)).block_names == ["stem", "mid", "head"]


@pytest.mark.parametrize(("change", "options", "expected"), [
    ("none", {"data": "nowhere"}, "task.options.data: got 'nowhere' (no folder train/ in it)"),
    ("empty class", {}, "task.options.data: got '{d}' (train: Found no valid file for the classes 3"),
    ("val classes", {}, "task.options.data: got '{d}' (val has classes"),
    ("none", {"model": "resnet_nope"}, "task.options.model: got 'resnet_nope' (unknown model)"),
    ("none", {"model": "tf:resnet18"}, "task.options.model: got 'tf:resnet18' (unknown library tf)"),
    ("none", {"augment": "yes"}, "task.options.augment: got 'yes'; allowed: true (timm's training transform), false"),
    ("none", {"augment": {"hflp": 0.0}}, "task.options.augment: got {{'hflp': 0.0}}; allowed: true (timm's"),
    ("none", {"augment": {"auto_augment": "nope"}},
     "task.options.augment: got {{'auto_augment': 'nope'}} (Unknown AA policy nope); allowed: true"),
    ("other weights", {}, "task.options.weights: got '{w}' (does not fit the model ("),
    ("none", {"model": "torchvision:squeezenet1_0", "image_size": 16},
     "task.options.image_size: got 16 (Given input size: (512x1x1)"),
    ("none", {"data": ["a"]}, "task.options.data: got ['a'] (not a path)"),
])  # through the CLI (exit 2, before Ray starts): tests/test_bad_input.py
def test_bad_image_options_are_one_line(folder, tmp_path, change, options, expected):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    if change == "empty class":
        shutil.rmtree(data / "train" / "3")
        (data / "train" / "3").mkdir()
    if change == "val classes":
        shutil.rmtree(data / "val" / "5")
    weights = tmp_path / "other.pt"
    if change == "other weights":
        torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), weights)
        options = {"weights": str(weights)}
    with pytest.raises(ConfigError) as caught:
        make_task(**{"data": str(data), "image_size": 32, "workers": 0, **options})
    message = str(caught.value)
    assert message.startswith(expected.format(d=data, w=weights)), message
    assert "\n" not in message and "allowed:" in message


def _weights_trained_on(train: Path, path: Path, steps: int = 30) -> None:
    """A resnet18 state dict trained for a few full-batch steps on ``train``'s images (32 px)."""
    images = torchvision.datasets.ImageFolder(str(train), torchvision.transforms.ToTensor())
    inputs = torch.stack([image for image, _ in images])
    targets = torch.tensor([label for _, label in images])
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=len(images.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    torch.save(model.state_dict(), path)


@pytest.mark.slow
def test_the_image_space_smoke_runs_with_nested_mlflow_runs(ray_runtime, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(folder, tmp_path / "digits_png")
    shutil.copytree(folder / "val", tmp_path / "digits_png" / "test")  # a test split (here: validation's images)
    # the data folder and the weights file named by bare words, as a user in their folder would; weights whose
    # features tell the digits apart, so that trials' scores differ (random weights leave every trial at chance)
    _weights_trained_on(folder / "train", tmp_path / "my_weights")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = run_search.main(["--space", str(SPACE), "--smoke-test", "--confirm", "0", "--tracking-uri", uri,
                            "--set", "task.options.data=digits_png", "--set", "task.options.weights=my_weights",
                            "--set", "task.options.image_size=32",
                            "--set", "task.options.workers=1", "--set", "train.batch_size=16"])
    assert code == 0
    client = MlflowClient(tracking_uri=uri)
    parent, children = parent_and_children(uri, "image_freeze")
    assert parent.data.params["task.options.weights"] == str(tmp_path / "my_weights")
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(len(history))) and history  # epoch 0: the probe
        assert child.data.tags["prefix_cache"].startswith("off: ")
        assert {"peak_mem_mb", "epoch_time_s", "frozen_params"} <= set(child.data.metrics)
    # no confirmation here: the recommended trial's best checkpoint alone is scored on the test split
    [tested] = [c for c in children if "test_score" in c.data.metrics]
    assert tested.data.tags["ray.trial_id"] == parent.data.tags["recommended_trial"]
    assert parent.data.metrics["test_score"] == tested.data.metrics["test_score"]
    assert {"test_loss"} <= set(tested.data.metrics)
    # the registered model, taken home: image files in, class folder names out, as well as on the test split
    import tune

    model = tune.load_model(parent.data.tags["registered_model_uri"], tracking_uri=uri)
    files = sorted((tmp_path / "digits_png" / "test").glob("*/*.png"))
    predicted = model.predict(files)
    assert model.classes == tuple(str(digit) for digit in range(10)) and set(predicted) <= set(model.classes)
    truth = [path.parent.name for path in files]
    assert sum(map(str.__eq__, predicted, truth)) / len(truth) == pytest.approx(tested.data.metrics["test_score"])


@pytest.mark.slow
@pytest.mark.parametrize(("model", "expected"), [
    ("resnet50", ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
    ("vit_small_patch16_224", ["stem", *(f"blocks.{i}" for i in range(11)), "blocks.11+norm", "head"]),
    ("convnext_tiny", ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]),
    ("torchvision:resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]),
])
def test_layers_lists_a_models_blocks_without_data(model, expected, capsys):
    assert run_search.main(["layers", "--space", str(SPACE), "--set", f"task.options.model={model}"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "%" in line]
    assert [row[1] for row in rows] == expected
    assert "(backbone, all_but_head)" in out or "backbone, all_but_head)" in out
    assert sum(float(row[-2].rstrip("%")) for row in rows) == pytest.approx(100, abs=0.5)


def test_the_image_task_is_built_in_and_its_data_option_may_be_a_bare_folder_name(folder, tmp_path):
    from tune.settings.config import TaskConfig
    from tune.tasks import BUILTIN_TASKS, absolute_paths, load_task

    assert "image" in BUILTIN_TASKS
    shutil.copytree(folder, tmp_path / "flowers")
    config = absolute_paths(TaskConfig("image", {"data": "flowers", "image_size": 32, "workers": 0}), tmp_path)
    task = load_task(config)
    assert config.options["data"] == str(tmp_path / "flowers")
    assert dataclasses.replace(task).name == "image" and len(task.train_data) == 40 and len(task.val_data) == 30


def test_the_preprocessing_a_model_takes_home_gives_what_validation_gave_from_files_and_pil_images(folder):
    import pickle

    import cloudpickle
    from PIL import Image

    task = make_task(data=str(folder), image_size=32, workers=0)
    preprocess = pickle.loads(cloudpickle.dumps(task.preprocess))  # as logged with the model and loaded back
    paths = [Path(path) for path, _ in task.val_data.samples[:5]]
    expected = torch.stack([task.val_data[i][0] for i in range(5)])
    assert torch.equal(preprocess(paths), expected)
    assert torch.equal(preprocess([str(p) for p in paths]), expected)
    with Image.open(paths[0]) as grey:  # a grey PIL image, converted to RGB as ImageFolder converts it
        assert torch.equal(preprocess(grey), expected[:1])
    assert task.classes == tuple(task.val_data.classes)
    with pytest.raises(TypeError, match="image files"):
        preprocess([42])


def test_augment_takes_timms_training_arguments_and_the_probe_sees_the_plain_images(folder):
    task = make_task(data=str(folder), image_size=32, workers=0, augment={"hflip": 0.0, "scale": [0.5, 1.0]})
    steps = {type(step).__name__: step for step in task.train_data.transform.transforms}
    assert "RandomHorizontalFlip" not in steps and steps["RandomResizedCropAndInterpolation"].scale == (0.5, 1.0)
    assert task.augments
    # the linear probe is fitted on the training images as evaluation sees them
    plain = [type(step).__name__ for step in task.probe_train_data.transform.transforms]
    assert plain == [type(step).__name__ for step in task.val_data.transform.transforms]
    assert make_task(data=str(folder), image_size=32, workers=0, augment=False).probe_train_data is None
    # {} is timm's training transform as it stands; a key the data config also sets overrides it
    defaults = make_task(data=str(folder), image_size=32, workers=0, augment={})
    steps = {type(t).__name__ for t in defaults.train_data.transform.transforms}
    assert defaults.augments and "RandomHorizontalFlip" in steps
    bilinear = make_task(data=str(folder), image_size=32, workers=0, augment={"interpolation": "bilinear"})
    assert "BILINEAR" in repr(bilinear.train_data.transform.transforms[0]).upper()
