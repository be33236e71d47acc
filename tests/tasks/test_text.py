"""The text task: blocks read from Hugging Face encoders, a tokenizer and a tiny model the tests train and save
as a user's model folder would be, CSV / JSON Lines data the tests write."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import resumed_epochs

from tune.errors import ConfigError
from tune.settings.config import TrainConfig
from tune.training.train import LoopTrial

transformers = pytest.importorskip("transformers", reason="the text task needs transformers (pip install -e "
                                                          "'.[text]')")
pytest.importorskip("datasets", reason="the text task reads its files with datasets")

GOOD = ["great", "lovely", "superb", "fine", "brilliant", "warm"]
BAD = ["awful", "dull", "poor", "grim", "broken", "cold"]
NOUNS = ["film", "meal", "book", "song", "trip", "room", "show"]


def sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` labelled sentences: the label says whether a good or a bad word is in it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        word = rng.choice(GOOD if label == "pos" else BAD)
        rows.append((f"the {rng.choice(NOUNS)} was {word} and the {rng.choice(NOUNS)} too", label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> str:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


CONFIGS = {
    "bert": lambda vocab: transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=3,
                                                  num_attention_heads=2, intermediate_size=64),
    "roberta": lambda vocab: transformers.RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=64,
                                                        max_position_embeddings=80, pad_token_id=0),
    "distilbert": lambda vocab: transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=4, n_heads=2,
                                                              hidden_dim=64),
}


def model_folder(root: Path, family: str) -> str:
    """A user's model folder: a WordPiece tokenizer trained on the tests' own sentences, a tiny encoder built from
    its config, both saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator([text for text, _ in sentences(300)], trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=specials))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    folder = root / family
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = CONFIGS[family](fast.vocab_size)
    transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("text")
    rows = sentences(240, seed=1)
    return {"model": model_folder(root, "bert"), "data": write_csv(root / "train.csv", rows[:160]),
            "val_data": write_csv(root / "val.csv", rows[160:]), "root": str(root)}


@pytest.mark.parametrize("family", list(CONFIGS))
def test_encoder_blocks_are_embeddings_each_layer_and_the_head(tmp_path, family):
    from tune.tasks.text import block_model

    block_model_ = block_model(model_folder(tmp_path, family), 3, max_length=16)
    module = block_model_.module
    base = module.base_model_prefix
    layers = {"bert": "encoder.layer", "roberta": "encoder.layer", "distilbert": "transformer.layer"}[family]
    n_layers = len(module.get_submodule(f"{base}.{layers}"))
    assert block_model_.block_names == ["embeddings", *(f"{base}.{layers}.{i}" for i in range(n_layers)), "head"]
    groups: list[set[str]] = [set() for _ in range(block_model_.n_blocks)]
    for name, index in block_model_.param_blocks.items():
        groups[index].add(name)
    names = [n for n, _ in module.named_parameters()]
    assert groups[0] == {n for n in names if n.startswith(f"{base}.embeddings.")}
    for i in range(n_layers):
        assert groups[1 + i] == {n for n in names if n.startswith(f"{base}.{layers}.{i}.")}
    outside = {n for n in names if not n.startswith(f"{base}.embeddings.") and not n.startswith(f"{base}.{layers}.")}
    assert groups[-1] == outside and any("classifier" in n for n in outside)
    assert block_model_.named_cut_points() == {"none": 0, "embeddings": 1, "backbone": n_layers + 1,
                                               "all_but_head": n_layers + 1}


@pytest.mark.parametrize("prefix_cache", ["auto", "off"])
def test_a_text_trial_freezes_exactly_its_layers_and_resumes_exactly(files, tmp_path, prefix_cache):
    from tune.tasks.text import make_task

    task = make_task(model=files["model"], data=files["data"], val_data=files["val_data"], max_length=16)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, freeze_stop=2, seed=1, prefix_cache=prefix_cache)
    trial = LoopTrial(task, cfg)
    assert trial.prefix_cache == ("on" if prefix_cache == "auto" else "off: off in the config")
    frozen = {n for n, i in trial.frozen.block_model.param_blocks.items() if i < 2}
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
    in_optimizer = {id(p) for group in trial.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in trial.model.named_parameters() if n not in frozen}
    straight = list(trial.epochs())
    after = dict(trial.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert {"val_accuracy", "val_macro_f1", "val_loss"} <= set(straight[-1])
    for want, have in zip(straight, resumed_epochs(task, cfg, tmp_path), strict=True):
        assert have["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert have["val_accuracy"] == want["val_accuracy"]


def test_a_text_trial_thawing_its_cached_layers_reads_the_task_data_after_the_thaw_and_resumes_exactly(files, tmp_path):
    """tune.training.policy's thaw with a chain's cached hidden states (the text task's prefix cache): after the thaw
    the training batches are the task's own, read through the whole model (no cached states carried along), as the
    uncached trial trains; resumed after the thaw, the same epochs."""
    from tune.tasks.text import make_task

    task = make_task(model=files["model"], data=files["data"], val_data=files["val_data"], max_length=16)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, freeze_stop=2, unfreeze_epoch=1, seed=1)
    cached, whole = LoopTrial(task, cfg), LoopTrial(task, dataclasses.replace(cfg, prefix_cache="off"))
    assert cached.prefix_cache == "on until the thaw after epoch 1"
    seen = []
    for a, b in zip(cached.epochs(), whole.epochs(), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) and a["val_accuracy"] == b["val_accuracy"]
        if cached._loader is not None:
            seen.append(type(cached._loader.loader.dataset.data).__name__)
    assert seen[0] == "WithHidden" and "WithHidden" not in seen[1:]
    for want, have in zip(list(LoopTrial(task, cfg).epochs()), resumed_epochs(task, cfg, tmp_path, after=2),
                          strict=True):
        assert have["train_loss"] == want["train_loss"] and have["val_accuracy"] == want["val_accuracy"]


DEBERTA = {"deberta": {}, "deberta_conv": {"conv_kernel_size": 3}}  # the conv reads the embeddings' output too


def _deberta(vocab: int, **extra) -> transformers.PretrainedConfig:
    return transformers.DebertaV2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, relative_attention=True, position_buckets=8,
                                        max_relative_positions=16, pos_att_type=["p2c", "c2p"],
                                        norm_rel_ebd="layer_norm", **extra)


# BERT in the fast suite; the other families (4 s each) with the slow tests
@pytest.mark.parametrize("family", [family if family == "bert" else pytest.param(family, marks=pytest.mark.slow)
                                    for family in [*CONFIGS, *DEBERTA]])
def test_the_cache_trains_an_encoder_as_the_whole_model_does_or_says_why_not(files, tmp_path, monkeypatch, family):
    from tune.tasks.text import make_task

    if family in DEBERTA:
        monkeypatch.setitem(CONFIGS, family, lambda vocab: _deberta(vocab, **DEBERTA[family]))
    task = make_task(model=model_folder(tmp_path, family), data=files["data"], val_data=files["val_data"],
                     max_length=16)
    n_blocks = task.build_model().n_blocks
    for stop in (1, 2, n_blocks - 1):  # the embeddings, one layer more, all but the head
        cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, freeze_stop=stop, seed=2, optimizer="adamw")
        cached, whole = LoopTrial(task, cfg), LoopTrial(task, dataclasses.replace(cfg, prefix_cache="off"))
        if family == "deberta_conv":  # the conv after the first layer reads the embeddings' output
            assert cached.prefix_cache.startswith("off: ") and "embeddings" in cached.prefix_cache, stop
            assert cached.net is cached.model
            continue
        assert cached.prefix_cache == "on", stop
        assert cached.cached_features[0].shape[:2] == (160, 16)
        for a, b in zip(cached.epochs(), whole.epochs(), strict=True):
            for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (stop, key)
        frozen = {n for n, i in cached.frozen.block_model.param_blocks.items() if i < stop}
        for (name, p), (_, q), (_, initial) in zip(cached.model.named_parameters(), whole.model.named_parameters(),
                                                   task.build_model().module.named_parameters(), strict=True):
            if name in frozen:
                assert torch.equal(p, initial) and torch.equal(q, initial), name
            else:
                assert torch.allclose(p, q, atol=1e-6), name


def test_text_trials_share_a_frozen_chains_hidden_states(files, tmp_path):
    from tune.tasks.text import make_task
    from tune.training.prefix_cache import SharedPrefixCache

    task = make_task(model=files["model"], data=files["data"], val_data=files["val_data"], max_length=16)
    shared = SharedPrefixCache(tmp_path / "prefix_cache")
    cfg = TrainConfig(epochs=1, batch_size=16, lr=3e-3, freeze_stop=3, seed=1)
    assert LoopTrial(task, cfg, shared_cache=shared).prefix_cache == "on (shared, computed)"
    other = dataclasses.replace(cfg, lr=1e-3)
    loaded = LoopTrial(task, other, shared_cache=shared)
    assert loaded.prefix_cache == "on (shared, loaded)"
    assert next(loaded.epochs())["train_loss"] == pytest.approx(next(LoopTrial(task, other).epochs())["train_loss"],
                                                                 rel=1e-6)
    assert LoopTrial(task, dataclasses.replace(cfg, freeze_stop=2), shared_cache=shared).prefix_cache == \
        "on (shared, computed)"  # another depth, another key
    assert len(list((tmp_path / "prefix_cache").glob("*.pt"))) == 2


def test_the_model_learns_the_sentences(files):
    from tune.tasks.text import make_task

    task = make_task(model=files["model"], data=files["data"], val_data=files["val_data"], max_length=16)
    trial = LoopTrial(task, TrainConfig(epochs=6, batch_size=16, lr=3e-3, seed=0))
    metrics = list(trial.epochs())
    assert metrics[-1]["val_accuracy"] > 0.8, [m["val_accuracy"] for m in metrics]
    # what the model takes home: its tokenizer (pickled, as logged) and label names; raw strings in, labels out
    import pickle

    import cloudpickle

    import tune

    model = tune.Predictor(trial.model, task.classes, pickle.loads(cloudpickle.dumps(task.preprocess)))
    rows = sentences(240, seed=1)[160:]
    predicted = model.predict([text for text, _ in rows])
    assert task.classes == ("neg", "pos") and set(predicted) <= {"neg", "pos"}
    assert sum(p == label for p, (_, label) in zip(predicted, rows, strict=True)) / len(rows) == pytest.approx(
        metrics[-1]["val_accuracy"])
    assert model.predict(rows[0][0]) == predicted[:1]  # one string alone


def test_json_lines_and_a_split_of_one_file(files, tmp_path):
    from tune.tasks.text import make_task

    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps({"review": t, "stars": 5 if label == "pos" else 1}) + "\n"
                            for t, label in sentences(100, seed=3)))
    task = make_task(model=files["model"], data=str(path), text_column="review", label_column="stars",
                     val_fraction=0.25, max_length=16)
    assert (len(task.train_data), len(task.val_data)) == (75, 25)
    assert set(task.train_data.tensors["labels"].tolist()) == {0, 1}


@pytest.mark.parametrize(("change", "expected"), [
    ({"data": "missing.csv"}, "task.options.data: got 'missing.csv' (no such file)"),
    ({"test_data": "missing.csv"}, "task.options.test_data: got 'missing.csv' (no such file)"),
    ({"text_column": "body"}, "task.options.text_column: got 'body' (no such column); allowed: a column of data"),
    ({"label_column": "stars"}, "task.options.label_column: got 'stars' (no such column)"),
    ({"one_class": True}, "task.options.label_column: got 'label' (one label in data: 'pos')"),
    ({"no_tokenizer": True}, "task.options.model: got '{m}' (no tokenizer in it (tokenizer.json"),
])
def test_bad_text_options_are_one_line(files, tmp_path, change, expected):
    from tune.tasks.text import make_task

    options = {"model": files["model"], "data": files["data"], "val_data": files["val_data"], "max_length": 16}
    if change.pop("one_class", False):
        options["data"] = write_csv(tmp_path / "one.csv", [(t, "pos") for t, _ in sentences(20)])
    if change.pop("no_tokenizer", False):
        bare = tmp_path / "bare"
        transformers.AutoModelForSequenceClassification.from_pretrained(files["model"]).save_pretrained(bare)
        options["model"] = str(bare)
    options.update(change)
    with pytest.raises(ConfigError) as caught:
        make_task(**options)
    message = str(caught.value)
    assert message.startswith(expected.format(m=options["model"])), message
    assert "\n" not in message and "allowed:" in message


def test_more_tokens_than_the_model_has_positions_for_is_one_line(files, tmp_path):
    from tune.tasks.text import make_task

    folder = model_folder(tmp_path, "roberta")  # 80 positions, two of them before the first token's
    assert make_task(model=folder, data=files["data"], val_data=files["val_data"], max_length=64)
    with pytest.raises(ConfigError) as caught:
        make_task(model=folder, data=files["data"], val_data=files["val_data"], max_length=128)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("task.options.max_length: got 128 (the model fails on 128 "
                                                       "tokens: ") and "max_position_embeddings: 80" in message


@pytest.mark.slow
def test_the_text_space_smoke_runs_with_nested_mlflow_runs(ray_runtime, files, tmp_path, monkeypatch):
    from conftest import parent_and_children
    from mlflow import MlflowClient

    import run_search

    space = Path(run_search.__file__).resolve().parent / "search_spaces" / "text_freeze.yaml"
    monkeypatch.chdir(tmp_path)
    shutil.copytree(files["model"], tmp_path / "my_bert")  # a model folder named by a bare word, as most users do
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = ["task.options.model=my_bert", f"task.options.data={files['data']}",
            f"task.options.val_data={files['val_data']}", f"task.options.test_data={files['val_data']}",
            "task.options.max_length=16", "train.batch_size=8", "train.lr_schedule=constant", "space.lr=0.005",
            # the tiny random-init encoder learns the sentences in two epochs only with its embeddings trainable
            # ([0, 0)); with them frozen it stays at chance: a grid of both, so the scores can tell them apart.
            # Random-init features: no probe to start from (the real encoder's probe: tests/test_pretrained_answer.py)
            "search.algorithm=grid", "space.freeze_stop={type: choice, values: [none, embeddings]}",
            "train.head_init=library"]
    code = run_search.main(["--space", str(space), "--smoke-test", "--tracking-uri", uri,
                            *(part for value in sets for part in ("--set", value))])
    assert code == 0
    client = MlflowClient(tracking_uri=uri)
    parent, children = parent_and_children(uri, "text_freeze")
    search = [c for c in children if c.data.tags.get("phase") == "search"]
    assert parent.info.status == "FINISHED" and len(search) == 2  # and the confirmation's runs, 2 seeds each
    assert parent.data.params["task.options.model"] == str(tmp_path / "my_bert")
    assert all(c.data.params["seed"] in ("1", "2") for c in children if c.data.tags.get("phase") == "confirm")
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val_macro_f1")
        assert history and [m.step for m in history] == list(range(1, len(history) + 1))
    assert parent.data.tags.get("recommended_model_uri", "").startswith("models:/")
    import tune  # the registered model, taken home: its tokenizer and label names with it

    model = tune.load_model(parent.data.tags["registered_model_uri"], tracking_uri=uri)
    assert model.classes == ("neg", "pos") and model.inputs == "strings"
    assert set(model.predict([text for text, _ in sentences(20, seed=5)])) <= {"neg", "pos"}
    tested = [c for c in children if "test_score" in c.data.metrics]  # the confirmed candidate's runs
    assert tested and all(c.data.tags["phase"] == "confirm" for c in tested)
    assert {"test_macro_f1", "test_loss"} <= set(tested[0].data.metrics) and "test_score" in parent.data.metrics


def test_layers_lists_an_encoders_blocks_from_its_folder(files, capsys):
    import run_search

    space = Path(run_search.__file__).resolve().parent / "search_spaces" / "text_freeze.yaml"
    assert run_search.main(["layers", "--space", str(space), "--set", f"task.options.model={files['model']}"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "%" in line]
    assert [row[1] for row in rows] == ["embeddings", *(f"bert.encoder.layer.{i}" for i in range(3)), "head"]
    assert "freeze: 1 (embeddings)" in out
