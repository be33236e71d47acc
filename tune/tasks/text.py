"""The built-in text-classification task: a Hugging Face encoder (BERT, RoBERTa, DistilBERT, DeBERTa, ...)
fine-tuned on local CSV or JSON Lines files, "how many encoder layers should I freeze?".

Options (``task.options`` in a search space file):
- ``model``: a model folder as ``save_pretrained`` writes it (config, weights, tokenizer), or a hub name on a
  machine that reaches the hub. Its blocks come from its own structure (``tune.blocks.encoder_blocks``):
  the embeddings, each encoder layer, the head; ``python run_search.py layers`` lists them.
- ``data``: the training file (``.csv``, ``.json`` / ``.jsonl``: JSON Lines), read with ``datasets``;
  ``val_data``: the validation file, or null to hold out ``val_fraction`` of ``data`` (split by ``split_seed``);
  ``test_data`` (optional): a test file, scored once for the recommendation after the search, never to choose.
- ``text_column`` (``text``): the text column, or a list of two for sentence pairs; ``label_column``
  (``label``): the labels, any values (strings or integers), numbered in sorted order.
- ``max_length`` (128): tokens per example; padding and truncation to it, tokenized once with the model's own
  tokenizer.
The classifier is new, sized for the labels. The primary metric is ``val_accuracy``; ``val_macro_f1`` is
logged beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tune.blocks import BlockModel, encoder_blocks
from tune.errors import ConfigError, one_line
from tune.tasks.base import Task, check_option, takes_paths

__all__ = ["TextInput", "TokenizedSet", "block_model", "layers_model", "make_task", "text_metrics"]


class TokenizedSet(Dataset):
    """Tokenized examples: each sample a dict of tensors (``input_ids``, ``attention_mask``, ..., ``labels``)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = dict(tensors)

    def __len__(self) -> int:
        return len(self.tensors["labels"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}


def _read(key: str, path: Any) -> Any:
    """A CSV or JSON Lines file as a ``datasets.Dataset``."""
    allowed = "a .csv, .json or .jsonl file"
    if not isinstance(path, str) or not Path(path).expanduser().is_file():
        raise ConfigError(f"task.options.{key}", path, allowed, problem="no such file" if path else "not set")
    import datasets

    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise ConfigError(f"task.options.{key}", path, allowed, problem=f"unknown suffix {suffix}")
    datasets.disable_progress_bars()
    try:
        reader = datasets.Dataset.from_csv if suffix == ".csv" else datasets.Dataset.from_json
        return reader(str(Path(path).expanduser()), keep_in_memory=True)
    except Exception as err:  # unreadable, not CSV / JSON: one line
        raise ConfigError(f"task.options.{key}", path, allowed, problem=one_line(err)) from None


# What a tokenizer's save_pretrained writes, one of them at least (a fast tokenizer, a WordPiece or BPE vocabulary,
# a SentencePiece model). Without any, transformers builds an empty-vocabulary tokenizer instead of failing.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "spm.model",
                   "sentencepiece.bpe.model")


def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    folder = Path(model).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError("task.options.model", model, "a model folder with its tokenizer (save_pretrained of both)"
                          " or a hub name", problem=f"no tokenizer in it ({', '.join(TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(model)
    except Exception as err:  # no tokenizer files in the folder, or no such model
        raise ConfigError("task.options.model", model, "a model folder with its tokenizer (save_pretrained of both)"
                          " or a hub name", problem=one_line(err)) from None


def block_model(model: str, num_labels: int, max_length: int = 128) -> BlockModel:
    """The encoder with a new classifier for ``num_labels``, as blocks read from its structure."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # "some weights were newly initialised": the new head, as intended
    logging.disable_progress_bar()  # a bar per model built, in every trial's log
    try:
        module = AutoModelForSequenceClassification.from_pretrained(model, num_labels=num_labels,
                                                                    ignore_mismatched_sizes=True)
    except Exception as err:  # no config or weights, an unknown architecture
        raise ConfigError("task.options.model", model, "a sequence-classification model folder (config and "
                          "weights, save_pretrained) or a hub name", problem=one_line(err)) from None
    example = {"input_ids": torch.ones(1, max_length, dtype=torch.long),
               "attention_mask": torch.ones(1, max_length, dtype=torch.long)}
    try:
        with torch.no_grad():
            module.eval()(**example)
    except Exception as err:  # e.g. more tokens than the model has positions for
        limit = getattr(module.config, "max_position_embeddings", None)
        raise ConfigError("task.options.max_length", max_length, "as many tokens as the model takes"
                          + (f" (its max_position_embeddings: {limit})" if limit else ""),
                          problem=f"the model fails on {max_length} tokens: {one_line(err)}") from None
    try:
        return encoder_blocks(module, example)
    except ValueError as err:
        raise ConfigError("task.options.model", model, "an encoder with a list of layers",
                          problem=one_line(err)) from None


def _columns(table: Any, key: str, text_column: Sequence[str], label_column: str) -> None:
    for column in [*text_column, label_column]:
        if column not in table.column_names:
            which = "label_column" if column == label_column else "text_column"
            raise ConfigError(f"task.options.{which}", column, f"a column of {key} ({', '.join(table.column_names)})",
                              problem="no such column")


class TextInput:
    """A text model's preprocessing: the task's own tokenizer, padded and truncated to its ``max_length``, as the
    trials saw their examples. ``pairs``: each input is a pair of strings (a sentence-pair task)."""

    def __init__(self, tokenizer: Any, max_length: int, pairs: bool = False) -> None:
        self.tokenizer, self.max_length, self.pairs = tokenizer, max_length, pairs
        self.inputs = "pairs of strings" if pairs else "strings"

    def columns(self, *texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """One column of strings (two for pairs) → the model's keyword tensors."""
        encoded = self.tokenizer(*texts, truncation=True, padding="max_length", max_length=self.max_length,
                                 return_tensors="pt")
        return {key: value for key, value in encoded.items() if key in ("input_ids", "attention_mask",
                                                                            "token_type_ids")}

    def __call__(self, items: Any) -> dict[str, torch.Tensor]:
        if isinstance(items, str) or (self.pairs and isinstance(items, tuple) and len(items) == 2
                                      and all(isinstance(text, str) for text in items)):
            items = [items]  # one input alone
        items = list(items)
        if self.pairs:
            if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
                raise TypeError(f"the text model takes {self.inputs}")
            return self.columns([str(a) for a, _ in items], [str(b) for _, b in items])
        if not all(isinstance(item, str) for item in items):
            raise TypeError(f"the text model takes {self.inputs}")
        return self.columns(items)


def _tokenize(encode: TextInput, table: Any, text_column: Sequence[str], labels: Sequence[int]) -> TokenizedSet:
    tensors = encode.columns(*([str(value) for value in table[column]] for column in text_column))
    return TokenizedSet({**tensors, "labels": torch.tensor(labels, dtype=torch.long)})


@takes_paths("model", "data", "val_data", "test_data")
def make_task(model: str | None = None, data: str | None = None, val_data: str | None = None,
              text_column: str | list[str] = "text", label_column: str = "label", max_length: int = 128,
              val_fraction: float = 0.2, split_seed: int = 0, workers: int = 0, test_data: str | None = None) -> Task:
    check_option("model", model, isinstance(model, str) and bool(model), "a model folder or a hub name")
    columns = [text_column] if isinstance(text_column, str) else text_column
    check_option("text_column", text_column, isinstance(columns, list) and 1 <= len(columns) <= 2
                 and all(isinstance(c, str) for c in columns), "a column name, or a list of two for sentence pairs")
    check_option("label_column", label_column, isinstance(label_column, str), "a column name")
    check_option("max_length", max_length, type(max_length) is int and max_length >= 8, "an integer >= 8")
    check_option("val_fraction", val_fraction, isinstance(val_fraction, float) and 0 < val_fraction < 1,
                 "a float in (0, 1)")
    check_option("workers", workers, type(workers) is int and workers >= 0, "an integer >= 0")
    train = _read("data", data)
    _columns(train, "data", columns, label_column)
    if val_data is None:
        parts = train.train_test_split(test_size=val_fraction, seed=split_seed)
        train, val = parts["train"], parts["test"]
    else:
        val = _read("val_data", val_data)
        _columns(val, "val_data", columns, label_column)
    values = sorted(set(train[label_column]), key=str)
    if len(values) < 2:
        raise ConfigError("task.options.label_column", label_column, "a column with at least two labels",
                          problem=f"one label in data: {values[0]!r}" if values else "no rows")
    number = {value: index for index, value in enumerate(values)}
    test = None
    if test_data is not None:
        test = _read("test_data", test_data)
        _columns(test, "test_data", columns, label_column)
    for key, path, table in (("val_data", val_data, val), ("test_data", test_data, test)):
        unseen = sorted({str(v) for v in table[label_column] if v not in number}) if table is not None else []
        if unseen:
            raise ConfigError(f"task.options.{key}", path, "labels that data has too",
                              problem=f"labels not in data: {', '.join(unseen[:3])}")
    encode = TextInput(_tokenizer(model), max_length, pairs=len(columns) == 2)
    train_set, val_set, test_set = (
        _tokenize(encode, table, columns, [number[v] for v in table[label_column]])
        if table is not None else None for table in (train, val, test))
    block_model(model, len(values), max_length)  # a model that cannot be built fails here, before any trial

    def build() -> BlockModel:  # a fresh model each time; its new head seeded by the trial (train.frozen_model)
        return block_model(model, len(values), max_length)

    return Task(name="text", build_model=build, metric="val_accuracy", train_data=train_set, val_data=val_set,
                test_data=test_set, training_step=_training_step, evaluate=text_metrics, num_workers=workers,
                extra_metrics=("val_macro_f1",), classes=tuple(str(value) for value in values), preprocess=encode,
                sources={"train": str(data) + (f", all but val_fraction={val_fraction} (split_seed={split_seed})"
                                               if val_data is None else ""),
                         "val": str(val_data) if val_data is not None
                         else f"{data}, val_fraction={val_fraction} (split_seed={split_seed})",
                         **({"test": str(test_data)} if test_data is not None else {})})


def _training_step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


@torch.no_grad()
def text_metrics(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """``val_accuracy``, ``val_macro_f1`` (the mean over labels of F1) and ``val_loss`` (mean cross-entropy)."""
    model.eval()
    predicted, truth, loss_sum = [], [], 0.0
    for batch in batches:
        labels = batch["labels"]
        logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predicted.append(logits.argmax(dim=1))
        truth.append(labels)
    predicted, truth = torch.cat(predicted), torch.cat(truth)
    f1 = []
    for label in torch.unique(torch.cat([predicted, truth])):
        tp = ((predicted == label) & (truth == label)).sum().item()
        fp = ((predicted == label) & (truth != label)).sum().item()
        fn = ((predicted != label) & (truth == label)).sum().item()
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"val_accuracy": (predicted == truth).float().mean().item(), "val_macro_f1": sum(f1) / len(f1),
            "val_loss": loss_sum / len(truth)}


def layers_model(options: Mapping[str, Any]) -> BlockModel:
    """The block model for ``run_search.py layers``: the model folder alone (two labels: only the classifier's
    size depends on the data)."""
    model = options.get("model")
    check_option("model", model, isinstance(model, str) and bool(model), "a model folder or a hub name")
    return block_model(model, 2, int(options.get("max_length", 128)))
