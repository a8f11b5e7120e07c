"""Dai et al.'s six datasets (SST-2, SST-5, MR, Subj, AG News, CB) from the Hugging Face hub.

Needs ``pip install dualform[hub]`` (the ``datasets`` package) and either the network or a local
copy of the hub repositories: ``hub_dir`` is a folder holding ``<hub_dir>/<owner>/<name>`` (for
instance snapshots made with ``huggingface-cli download --repo-type dataset SetFit/sst2``), loaded
by the same ``datasets.load_dataset`` call as the hub itself.

Each task lists the hub copies it accepts, first that loads wins, each with its own column names
and splits. **Labels are mapped by name, never by position**: a row's label name is its
``label_text`` (SetFit copies) or the ``ClassLabel`` name of its integer (GLUE, SuperGLUE,
rotten_tomatoes, ag_news), looked up in the task's table (CB: entailment → True, contradiction →
False, neutral → Neither). A name outside the table, or a copy that carries no names at all, is
refused, so a copy with a different label order can't be silently mislabelled. Rows labelled −1
(unlabelled GLUE-style test splits) are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualform.tasks.sources import (
    SENTIMENT_2,
    SENTIMENT_5,
    SUBJECTIVITY,
    Example,
    HubUnavailableError,
    TaskError,
    TaskSpec,
)


@dataclass(frozen=True)
class HubSource:
    """One hub copy of a dataset: id, config, our field → its column, our split → its split.

    A split mapped to ``None`` is carved from train (the hub copy has none, or only an
    unlabelled one).
    """

    dataset_id: str
    config: str | None
    fields: dict[str, str]
    splits: dict[str, str | None]


@dataclass(frozen=True)
class HubSpec:
    """A task's template and label words, the hub copies it accepts and its label-name table."""

    spec: TaskSpec
    sources: tuple[HubSource, ...]
    label_names: dict[str, int]


_STD = {"train": "train", "validation": "validation", "test": "test"}
_NO_VAL = {"train": "train", "validation": None, "test": "test"}
#: GLUE / SuperGLUE test splits are unlabelled: their validation split is the test set (Dai et al.
#: report validation accuracy) and a validation split is carved from train.
_VAL_AS_TEST = {"train": "train", "validation": None, "test": "validation"}
_TEXT = {"x": "text"}


def _spec(template: str, labels: tuple[str, ...], ids: Iterable[str], note: str) -> TaskSpec:
    return TaskSpec(template, labels, note, "huggingface: " + " or ".join(ids))


def _hub(template, labels, sources, label_names, note) -> HubSpec:
    ids = [s.dataset_id + (f"/{s.config}" if s.config else "") for s in sources]
    return HubSpec(_spec(template, tuple(labels), ids, note), tuple(sources), label_names)


HUB_SPECS: dict[str, HubSpec] = {
    "sst2": _hub(
        "Sentence: {x} Label: {y}", SENTIMENT_2,
        [HubSource("SetFit/sst2", None, _TEXT, _STD),
         HubSource("stanfordnlp/sst2", None, {"x": "sentence"}, _VAL_AS_TEST)],
        {"negative": 0, "positive": 1},
        "SST-2 movie-review sentences, binary sentiment."),
    "sst5": _hub(
        "Sentence: {x} Label: {y}", SENTIMENT_5,
        [HubSource("SetFit/sst5", None, _TEXT, _STD)],
        {"very negative": 0, "negative": 1, "neutral": 2, "positive": 3, "very positive": 4},
        "SST-5 movie-review sentences, 5-way sentiment."),
    "mr": _hub(
        "Review: {x} Sentiment: {y}", SENTIMENT_2,
        [HubSource("cornell-movie-review-data/rotten_tomatoes", None, _TEXT, _STD),
         HubSource("rotten_tomatoes", None, _TEXT, _STD)],
        {"neg": 0, "pos": 1, "negative": 0, "positive": 1},
        "MR (rotten tomatoes) movie-review sentences, binary sentiment."),
    "subj": _hub(
        "Input: {x} Type: {y}", SUBJECTIVITY,
        [HubSource("SetFit/subj", None, _TEXT, _NO_VAL)],
        {"objective": 0, "subjective": 1},
        "Subj: objective plot sentences vs subjective review snippets (Pang & Lee)."),
    "agnews": _hub(
        "News: {x} Type: {y}", ("World", "Sports", "Business", "Technology"),
        [HubSource("fancyzhx/ag_news", None, _TEXT, _NO_VAL),
         HubSource("ag_news", None, _TEXT, _NO_VAL)],
        {"world": 0, "sports": 1, "business": 2, "sci/tech": 3},
        "AG News topic classification (Sci/Tech → Technology)."),
    "cb": _hub(
        "{premise} Question: {hypothesis} True, False, or Neither? Answer: {y}",
        ("True", "False", "Neither"),
        [HubSource(i, "cb", {"premise": "premise", "hypothesis": "hypothesis"}, _VAL_AS_TEST)
         for i in ("aps/super_glue", "super_glue")],
        {"entailment": 0, "contradiction": 1, "neutral": 2},
        "CommitmentBank: entailment → True, contradiction → False, neutral → Neither."),
}


def import_datasets():
    """The ``datasets`` module, or :class:`HubUnavailableError` saying what to install."""
    try:
        import datasets
    except ImportError as err:
        raise HubUnavailableError(
            "Hub tasks need the network and `pip install dualform[hub]` (the `datasets` package); "
            f"offline, use one of the packaged tasks instead. ({err})"
        ) from err
    return datasets


def load_hub_splits(
    name: str, hub_dir: str | Path | None = None
) -> tuple[TaskSpec, dict[str, list[Example] | None]]:
    """A hub task's spec and our split name → examples (``None``: carve it from train).

    ``hub_dir``: load ``<hub_dir>/<dataset id>`` (a local copy of the hub repository) instead of
    the hub; copies missing there are skipped.
    """
    hub = HUB_SPECS[name]
    datasets = import_datasets()
    errors = []
    for source in hub.sources:
        path = source.dataset_id if hub_dir is None else Path(hub_dir) / source.dataset_id
        if hub_dir is not None and not Path(path).is_dir():
            errors.append(f"{path}: no such folder")
            continue
        try:
            dataset = datasets.load_dataset(str(path), source.config)
        except Exception as err:  # noqa: BLE001 - network, auth, missing id: try the next copy
            errors.append(f"{source.dataset_id}: {err.__class__.__name__}: {err}")
            continue
        splits = {ours: None if theirs is None else
                  hub_examples(dataset[theirs], hub, source, f"{source.dataset_id}/{theirs}")
                  for ours, theirs in source.splits.items()}
        loaded = source.dataset_id + (f"/{source.config}" if source.config else "")
        return dataclasses.replace(hub.spec, source=f"huggingface: {loaded}"), splits
    raise HubUnavailableError(
        f"Could not load hub task {name!r}; it needs the network (or hub_dir with a local copy) "
        "and `pip install dualform[hub]`. Tried: " + "; ".join(errors)
    )


def hub_examples(rows: Any, hub: HubSpec, source: HubSource, where: str) -> list[Example]:
    """Examples of one hub split; labels mapped by name (see the module docstring)."""
    feature = (getattr(rows, "features", None) or {}).get("label")
    class_names = getattr(feature, "names", None)
    columns = [*source.fields.values(), "label"]
    examples = []
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise TaskError(f"{where} row {i} lacks column(s) {missing}; it has {sorted(row)}.")
        label = label_index(row, class_names, hub.label_names, f"{where} row {i}")
        if label is not None:
            fields = {ours: str(row[theirs]).strip() for ours, theirs in source.fields.items()}
            examples.append(Example(fields, label))
    return examples


def label_index(row: dict[str, Any], class_names: list[str] | None,
                label_names: dict[str, int], where: str) -> int | None:
    """Our label index of a hub row (``None``: unlabelled, label −1)."""
    value = int(row["label"])
    if value < 0:
        return None
    name = row.get("label_text")
    if name is None and class_names is not None:
        if value >= len(class_names):
            raise TaskError(f"{where}: label {value} is outside the ClassLabel names {class_names}.")
        name = class_names[value]
    if name is None:
        raise TaskError(
            f"{where}: the rows carry neither `label_text` nor ClassLabel names, so the label "
            f"order can't be checked; expected names {list(label_names)}."
        )
    key = str(name).strip().lower()
    if key not in label_names:
        raise TaskError(f"{where}: unexpected label name {name!r}; expected {list(label_names)}.")
    return label_names[key]
