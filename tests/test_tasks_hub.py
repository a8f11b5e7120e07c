"""Hub loaders of Dai et al.'s six datasets, on local copies written with the hub's real schemas.

Each copy has the real repository's layout, column names, split names and label order (ClassLabel
names, or SetFit's ``label_text``), so ``datasets.load_dataset`` runs exactly as on the hub. Each
row's text carries its hub label name, so the test can check every mapped label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dualform.tasks.hub import HUB_SPECS, label_index
from dualform.tasks.prompts import (
    HUB_TASKS,
    HubUnavailableError,
    Task,
    TaskError,
    label_token_ids,
    load_task,
)

#: Dai et al.'s templates and label words, verbatim.
PAPER = {
    "sst2": ("Sentence: {x} Label: {y}", ["Negative", "Positive"]),
    "sst5": ("Sentence: {x} Label: {y}", ["terrible", "bad", "neutral", "good", "great"]),
    "mr": ("Review: {x} Sentiment: {y}", ["Negative", "Positive"]),
    "subj": ("Input: {x} Type: {y}", ["objective", "subjective"]),
    "agnews": ("News: {x} Type: {y}", ["World", "Sports", "Business", "Technology"]),
    "cb": ("{premise} Question: {hypothesis} True, False, or Neither? Answer: {y}",
           ["True", "False", "Neither"]),
}

#: Hub label names in the hub's own order → the paper's label word.
HUB_LABELS = {
    "SetFit/sst2": {"negative": "Negative", "positive": "Positive"},
    "stanfordnlp/sst2": {"negative": "Negative", "positive": "Positive"},
    "SetFit/sst5": {"very negative": "terrible", "negative": "bad", "neutral": "neutral",
                    "positive": "good", "very positive": "great"},
    "cornell-movie-review-data/rotten_tomatoes": {"neg": "Negative", "pos": "Positive"},
    "SetFit/subj": {"objective": "objective", "subjective": "subjective"},
    "fancyzhx/ag_news": {"World": "World", "Sports": "Sports", "Business": "Business",
                         "Sci/Tech": "Technology"},
    "aps/super_glue": {"entailment": "True", "contradiction": "False", "neutral": "Neither"},
}

#: Older hub ids of the same repositories (the loaders fall back to them).
LEGACY = {"rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
          "ag_news": "fancyzhx/ag_news", "super_glue": "aps/super_glue"}

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    """``datasets`` writes its Arrow cache under the test's folder, not the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def labelled_text(split: str, i: int, name: str) -> str:
    return f"{split} sentence {i}: {name}"


def hub_name(text: str) -> str:
    """The hub label name a row's text was written with."""
    return text.split(": ", 1)[1]


def hub_split(text: str) -> str:
    """The hub split a row's text was written in."""
    return text.split(" sentence ", 1)[0]


def write_jsonl(path: Path, split: str, names: list[str], n: int) -> None:
    """SetFit layout: ``<split>.jsonl`` rows ``{"text", "label", "label_text"}``."""
    rows = [{"text": labelled_text(split, i, names[i % len(names)]), "label": i % len(names),
             "label_text": names[i % len(names)]} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_parquet(path: Path, split: str, names: list[str], n: int, *, text: str = "text",
                  extra: dict | None = None, unlabelled: bool = False) -> None:
    """Parquet with the ``ClassLabel`` feature stored in its schema, as on the hub."""
    columns = {text: [labelled_text(split, i, names[i % len(names)]) for i in range(n)],
               "label": [-1 if unlabelled else i % len(names) for i in range(n)]}
    features = {text: datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    for column, (values, feature) in (extra or {}).items():
        columns[column], features[column] = values(n), feature
    path.parent.mkdir(parents=True, exist_ok=True)
    table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    table.to_parquet(str(path))


def write_copy(root: Path, dataset_id: str, sizes: dict[str, int]) -> None:
    """A local copy of one hub repository with its real layout and schema."""
    folder = root / dataset_id
    names = list(HUB_LABELS[LEGACY.get(dataset_id, dataset_id)])
    if dataset_id.startswith("SetFit/"):
        for split, n in sizes.items():
            write_jsonl(folder / f"{split}.jsonl", split, names, n)
    elif dataset_id == "stanfordnlp/sst2":  # GLUE schema: idx, sentence, label; test unlabelled
        idx = {"idx": (lambda n: list(range(n)), datasets.Value("int32"))}
        for split, n in sizes.items():
            write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", split, names, n,
                          text="sentence", extra=idx, unlabelled=split == "test")
    elif dataset_id in ("aps/super_glue", "super_glue"):
        write_cb(folder, sizes)
    elif dataset_id.endswith("ag_news"):
        for split, n in sizes.items():
            write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", split, names, n)
    else:  # rotten_tomatoes: train/validation/test.parquet at the top
        for split, n in sizes.items():
            write_parquet(folder / f"{split}.parquet", split, names, n)


def write_cb(folder: Path, sizes: dict[str, int]) -> None:
    """SuperGLUE layout: one folder per config, declared in the README's ``configs``."""
    names = list(HUB_LABELS["aps/super_glue"])
    features = datasets.Features({
        "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
        "idx": datasets.Value("int32"), "label": datasets.ClassLabel(names=names)})
    config = ["---", "configs:", "- config_name: cb", "  data_files:"]
    for split, n in sizes.items():
        unlabelled = split == "test"  # SuperGLUE's test labels are hidden (-1)
        columns = {"premise": [f"{split} premise {i}." for i in range(n)],
                   "hypothesis": [labelled_text(split, i, names[i % 3]) for i in range(n)],
                   "idx": list(range(n)), "label": [-1 if unlabelled else i % 3 for i in range(n)]}
        path = folder / "cb" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
        config += [f"  - split: {split}", f"    path: cb/{split}-*"]
    (folder / "README.md").write_text("\n".join([*config, "---", ""]))


# task, hub copy written, its split sizes, n_validation (None: the hub's own validation split),
# expected (train, validation, test) sizes and the hub split our test split comes from.
CASES = [
    ("sst2", "SetFit/sst2", {"train": 40, "validation": 10, "test": 12}, None, (40, 10, 12), "test"),
    ("sst2", "stanfordnlp/sst2", {"train": 40, "validation": 10, "test": 12}, 4, (36, 4, 10),
     "validation"),
    ("sst5", "SetFit/sst5", {"train": 40, "validation": 10, "test": 15}, None, (40, 10, 15), "test"),
    ("mr", "cornell-movie-review-data/rotten_tomatoes",
     {"train": 40, "validation": 10, "test": 12}, None, (40, 10, 12), "test"),
    ("subj", "SetFit/subj", {"train": 40, "test": 12}, 4, (36, 4, 12), "test"),
    ("agnews", "fancyzhx/ag_news", {"train": 40, "test": 12}, 4, (36, 4, 12), "test"),
    ("cb", "aps/super_glue", {"train": 30, "validation": 9, "test": 6}, 4, (26, 4, 9),
     "validation"),
]


@pytest.mark.parametrize(("name", "dataset_id", "sizes", "n_validation", "expected", "test_from"),
                         CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_hub_loader_maps_every_label_by_name(tmp_path, name, dataset_id, sizes, n_validation,
                                             expected, test_from):
    write_copy(tmp_path / "hub", dataset_id, sizes)
    task = load_task(name, hub_dir=tmp_path / "hub", n_validation=n_validation, seed=3)
    assert (task.template, task.label_words) == PAPER[name]
    assert task.source == "huggingface: " + dataset_id + ("/cb" if name == "cb" else "")
    assert (len(task.train), len(task.validation), len(task.test)) == expected
    words = HUB_LABELS[dataset_id]
    field = "hypothesis" if name == "cb" else "x"
    for split in ("train", "validation", "test"):
        for example in task.split(split):
            text = example.fields[field]
            assert task.label_words[example.label] == words[hub_name(text)], (split, text)
    assert {hub_split(e.fields[field]) for e in task.test} == {test_from}
    assert not {e.key() for e in task.train} & {e.key() for e in task.validation + task.test}
    again = load_task(name, hub_dir=tmp_path / "hub", n_validation=n_validation, seed=3)
    assert [e.key() for e in again.validation] == [e.key() for e in task.validation]
    assert [e.key() for e in again.train] == [e.key() for e in task.train]


def test_cb_prompt_is_the_papers(tmp_path):
    write_copy(tmp_path, "aps/super_glue", {"train": 6, "validation": 3})
    task = load_task("cb", hub_dir=tmp_path, n_validation=1)
    example = next(e for e in task.test if e.label == 2)
    assert task.format(example) == (f"{example.fields['premise']} Question: "
                                    f"{example.fields['hypothesis']} True, False, or Neither? "
                                    "Answer: Neither")


def test_legacy_hub_ids_are_the_fallback(tmp_path):
    write_copy(tmp_path, "rotten_tomatoes", {"train": 10, "validation": 4, "test": 4})
    task = load_task("mr", hub_dir=tmp_path)
    assert task.source == "huggingface: rotten_tomatoes"
    assert all(task.label_words[e.label] == {"neg": "Negative", "pos": "Positive"}[
        hub_name(e.text)] for e in task.train)


def test_class_label_order_is_read_not_assumed(tmp_path):
    """A copy whose ClassLabel names come in another order is still mapped by name."""
    reordered = ["Sci/Tech", "World", "Business", "Sports"]
    for split, n in (("train", 16), ("test", 8)):
        write_parquet(tmp_path / "fancyzhx/ag_news/data" / f"{split}-00000-of-00001.parquet",
                      split, reordered, n)
    task = load_task("agnews", hub_dir=tmp_path, n_validation=4)
    wanted = HUB_LABELS["fancyzhx/ag_news"]
    assert all(task.label_words[e.label] == wanted[hub_name(e.text)]
               for e in task.train + task.validation + task.test)


def test_copies_without_label_names_are_refused(tmp_path):
    folder = tmp_path / "SetFit/subj"
    folder.mkdir(parents=True)
    rows = [{"text": f"sentence {i}", "label": i % 2} for i in range(8)]  # no label_text
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskError, match="neither `label_text` nor ClassLabel names"):
        load_task("subj", hub_dir=tmp_path)


def test_label_text_decides_and_unknown_names_fail():
    names = HUB_SPECS["subj"].label_names
    assert label_index({"label": 0, "label_text": "subjective"}, None, names, "row") == 1
    assert label_index({"label": 1}, ["subjective", "objective"], names, "row") == 0
    assert label_index({"label": -1}, ["objective", "subjective"], names, "row") is None
    with pytest.raises(TaskError, match="unexpected label name 'opinion'"):
        label_index({"label": 0, "label_text": "opinion"}, None, names, "row")
    with pytest.raises(TaskError, match="outside the ClassLabel names"):
        label_index({"label": 2}, ["objective", "subjective"], names, "row")


def test_missing_column_names_the_columns(tmp_path):
    write_copy(tmp_path, "SetFit/sst5", {"train": 5, "validation": 5, "test": 5})
    for path in (tmp_path / "SetFit/sst5").glob("*.jsonl"):  # a GLUE-style column name
        path.write_text(path.read_text().replace('"text"', '"sentence"'))
    with pytest.raises(TaskError, match=r"lacks column\(s\) \['text'\]"):
        load_task("sst5", hub_dir=tmp_path)


def test_missing_local_copy_lists_the_folders_tried(tmp_path):
    with pytest.raises(HubUnavailableError, match=r"ag_news: no such folder"):
        load_task("agnews", hub_dir=tmp_path)


def test_hub_task_without_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    assert set(HUB_TASKS) == set(PAPER)
    with pytest.raises(HubUnavailableError, match=r"network and `pip install dualform\[hub\]`"):
        load_task("sst2")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_label_words_have_distinct_first_tokens(smol, name):
    template, words = PAPER[name]
    task = Task(name, template, words, [], [], [])
    ids = label_token_ids(smol, task)
    assert len(set(ids)) == len(words)
