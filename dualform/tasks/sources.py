"""Where task examples come from: lexicons shipped by PyPI packages, the Hugging Face hub, files.

Offline sources (no network, real human labels; located with ``importlib.util.find_spec`` so the
packages are never imported):

* ``afinn`` — ``afinn/data/AFINN-en-165.txt``: 3,382 English words and phrases rated by a human
  annotator on an integer scale −5…+5 (Nielsen 2011). Two words rated 0 are dropped.
* ``vaderSentiment`` — ``vaderSentiment/vader_lexicon.txt``: ≈7,500 tokens, each rated by ten
  raters on −4…+4; the file holds the mean and standard deviation (Hutto & Gilbert 2014). Only
  lower-case alphabetic words are used (no emoticons or abbreviations with digits/punctuation).
* ``countryinfo`` — ``countryinfo/data*/*.json``: countries and territories with capital and
  UN region (Africa, Americas, Asia, Europe, Oceania).

Every builder returns a :class:`TaskSpec` (template, label words, description, source) plus the
pool of :class:`Example` objects; :mod:`dualform.tasks.prompts` (which re-exports ``Example`` and the
errors) splits the pool.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualform.errors import DualformError


class TaskError(DualformError, ValueError):
    """A task could not be built or used; the message says what to do."""


class HubUnavailableError(TaskError, ImportError):
    """A hub task was requested but ``datasets`` or the network is missing."""


@dataclass(frozen=True)
class Example:
    """One labelled example: template fields (``{"x": ...}`` or named ones) and a label index."""

    fields: dict[str, str]
    label: int

    @property
    def text(self) -> str:
        """The ``x`` field, or the fields joined with " / " for multi-field examples."""
        return self.fields.get("x") or " / ".join(self.fields.values())

    def key(self) -> tuple[tuple[str, str], ...]:
        """Hashable identity of the inputs (used to keep splits disjoint)."""
        return tuple(sorted(self.fields.items()))


@dataclass(frozen=True)
class TaskSpec:
    """Everything about a task except its examples."""

    template: str
    label_words: tuple[str, ...]
    description: str
    source: str


# --------------------------------------------------------------------------- package data files


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            f"The offline tasks need the PyPI package {package!r}: pip install {package}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise TaskError(f"{package} is installed but its data file {relative} is missing.")
    return path


def afinn_scores() -> dict[str, int]:
    """AFINN-en-165: word or phrase → integer valence −5…+5."""
    path = package_file("afinn", "data/AFINN-en-165.txt")
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            word, score = line.rsplit("\t", 1)
            scores[word.strip()] = int(score)
    return scores


_WORD = re.compile(r"[a-z][a-z-]*[a-z]")


def vader_lexicon() -> dict[str, tuple[float, float]]:
    """VADER: lower-case alphabetic word → (mean valence −4…+4, std over the ten raters)."""
    path = package_file("vaderSentiment", "vader_lexicon.txt")
    lexicon = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and _WORD.fullmatch(parts[0]):
            lexicon[parts[0]] = (float(parts[1]), float(parts[2]))
    return lexicon


def countries() -> list[dict[str, Any]]:
    """countryinfo records (name, capital, region, …), one per name, sorted by name."""
    root = package_file("countryinfo", "data").parent
    records: dict[str, dict[str, Any]] = {}
    for folder in ("data", "data_no_iso"):
        for path in sorted((root / folder).glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # the package ships one empty file
            if record.get("name"):
                records.setdefault(record["name"], record)
    return [records[name] for name in sorted(records)]


# --------------------------------------------------------------------------- offline tasks

SENTIMENT_2 = ("Negative", "Positive")
SENTIMENT_5 = ("terrible", "bad", "neutral", "good", "great")
VALENCE = ("unpleasant", "pleasant")
REGIONS = ("Africa", "Americas", "Asia", "Europe")
#: |mean| below which (and rater std below which) a VADER word counts as neutral.
NEUTRAL_MEAN, NEUTRAL_STD = 0.3, 1.0
#: |mean| a VADER word needs to be used in the binary valence task.
VALENCE_MIN = 1.5


def _word(x: str, label: int) -> Example:
    return Example({"x": x}, label)


def afinn_sentiment() -> tuple[TaskSpec, list[Example]]:
    """AFINN words: score < 0 → Negative (0), score > 0 → Positive (1); score 0 dropped."""
    spec = TaskSpec(
        "Word: {x} Sentiment: {y}", SENTIMENT_2,
        "Binary sentiment of English words (AFINN-en-165 human ratings, sign of the score).",
        "afinn: AFINN-en-165.txt",
    )
    pool = [_word(w, int(s > 0)) for w, s in afinn_scores().items() if s != 0]
    return spec, pool


def sentiment5_class(score: int) -> int:
    """AFINN score → 5-way class: ≤−3 terrible, −2..−1 bad, +1..+2 good, ≥+3 great."""
    if score <= -3:
        return 0
    if score < 0:
        return 1
    return 3 if score <= 2 else 4


def afinn_sentiment5() -> tuple[TaskSpec, list[Example]]:
    """AFINN words in four score bins plus VADER's neutral words as the middle class.

    AFINN has no neutral words (only two are rated 0), so the ``neutral`` class (2) takes the
    lower-case words of the VADER lexicon that are not in AFINN and whose ten raters agree they
    are neutral: |mean| ≤ 0.3 and std ≤ 1.0.
    """
    spec = TaskSpec(
        "Word: {x} Sentiment: {y}", SENTIMENT_5,
        "5-way sentiment of English words: AFINN-en-165 scores binned (≤−3 terrible, −2..−1 bad, "
        "+1..+2 good, ≥+3 great) plus VADER words rated neutral (|mean| ≤ 0.3, std ≤ 1.0).",
        "afinn: AFINN-en-165.txt + vaderSentiment: vader_lexicon.txt",
    )
    scores = afinn_scores()
    pool = [_word(w, sentiment5_class(s)) for w, s in scores.items() if s != 0]
    pool += [
        _word(w, 2) for w, (mean, std) in vader_lexicon().items()
        if w not in scores and abs(mean) <= NEUTRAL_MEAN and std <= NEUTRAL_STD and len(w) > 2
    ]
    return spec, pool


def vader_valence() -> tuple[TaskSpec, list[Example]]:
    """VADER words with mean ≤ −1.5 → unpleasant (0), ≥ +1.5 → pleasant (1)."""
    spec = TaskSpec(
        "Word: {x} Valence: {y}", VALENCE,
        "Binary valence of English words (VADER lexicon, mean of ten human ratings, |mean| ≥ 1.5).",
        "vaderSentiment: vader_lexicon.txt",
    )
    pool = [
        _word(w, int(mean > 0)) for w, (mean, _) in vader_lexicon().items()
        if abs(mean) >= VALENCE_MIN
    ]
    return spec, pool


def _region_pool(field: str) -> list[Example]:
    seen: set[str] = set()
    pool = []
    for record in countries():
        value, region = record.get(field) or "", record.get("region")
        value = (value[0] if isinstance(value, list) and value else str(value or "")).strip()
        if value and region in REGIONS and value not in seen:
            seen.add(value)
            pool.append(_word(value, REGIONS.index(region)))
    return pool


def country_region() -> tuple[TaskSpec, list[Example]]:
    """countryinfo: country name → UN region (Oceania left out: its name is two tokens)."""
    spec = TaskSpec(
        "Country: {x} Region: {y}", REGIONS,
        "World region of a country or territory (countryinfo, UN regions; Oceania omitted).",
        "countryinfo: data/*.json (name, region)",
    )
    return spec, _region_pool("name")


def capital_region() -> tuple[TaskSpec, list[Example]]:
    """countryinfo: capital city → UN region of its country."""
    spec = TaskSpec(
        "City: {x} Region: {y}", REGIONS,
        "World region of a capital city (countryinfo capitals, UN regions; Oceania omitted).",
        "countryinfo: data/*.json (capital, region)",
    )
    return spec, _region_pool("capital")


OFFLINE_BUILDERS: dict[str, Callable[[], tuple[TaskSpec, list[Example]]]] = {
    "afinn-sentiment": afinn_sentiment,
    "afinn-sentiment-5": afinn_sentiment5,
    "vader-valence": vader_valence,
    "country-region": country_region,
    "capital-region": capital_region,
}


# --------------------------------------------------------------------------- hub tasks (Dai)


@dataclass(frozen=True)
class HubSpec:
    """A Hugging Face dataset with Dai et al.'s template and label words.

    ``splits`` maps our split names to the hub's; ``None`` means "carve it from train".
    ``label_texts`` maps a row's ``label_text`` (SetFit datasets have one) to a label index, so
    a hub dataset whose integer labels are ordered differently fails loudly instead of being
    silently mislabelled; rows without ``label_text`` use the integer ``label``.
    """

    dataset_ids: tuple[str, ...]
    config: str | None
    spec: TaskSpec
    fields: dict[str, str]
    splits: dict[str, str | None]
    label_texts: dict[str, int] | None = None


def _hub(ids, config, template, labels, fields, splits, label_texts=None, note="") -> HubSpec:
    source = f"huggingface: {ids[0]}" + (f"/{config}" if config else "")
    spec = TaskSpec(template, tuple(labels), note, source)
    return HubSpec(tuple(ids), config, spec, fields, splits, label_texts)


_STD = {"train": "train", "validation": "validation", "test": "test"}
_NO_VAL = {"train": "train", "validation": None, "test": "test"}
_SST2_TEXTS = {"negative": 0, "positive": 1}
_SST5_TEXTS = {"very negative": 0, "negative": 1, "neutral": 2, "positive": 3, "very positive": 4}
HUB_SPECS: dict[str, HubSpec] = {
    "sst2": _hub(["SetFit/sst2"], None, "Sentence: {x} Label: {y}", SENTIMENT_2, {"x": "text"},
                 _STD, _SST2_TEXTS, note="SST-2 movie-review sentences, binary sentiment."),
    "sst5": _hub(["SetFit/sst5"], None, "Sentence: {x} Label: {y}", SENTIMENT_5, {"x": "text"},
                 _STD, _SST5_TEXTS, note="SST-5 movie-review sentences, 5-way sentiment."),
    "mr": _hub(["cornell-movie-review-data/rotten_tomatoes", "rotten_tomatoes"], None,
               "Review: {x} Sentiment: {y}", SENTIMENT_2, {"x": "text"}, _STD,
               note="MR (rotten tomatoes) movie reviews, binary sentiment."),
    "subj": _hub(["SetFit/subj"], None, "Input: {x} Type: {y}", ("objective", "subjective"),
                 {"x": "text"}, _NO_VAL, {"objective": 0, "subjective": 1},
                 note="Subjectivity: objective vs subjective sentences."),
    "agnews": _hub(["fancyzhx/ag_news", "ag_news"], None, "News: {x} Type: {y}",
                   ("World", "Sports", "Business", "Technology"), {"x": "text"}, _NO_VAL,
                   note="AG News topic classification."),
    # SuperGLUE CB: the hub test split is unlabelled, so test = hub validation (as Dai: validation).
    "cb": _hub(["aps/super_glue", "super_glue"], "cb",
               "{premise} Question: {hypothesis} True, False, or Neither? Answer: {y}",
               ("True", "False", "Neither"), {"premise": "premise", "hypothesis": "hypothesis"},
               {"train": "train", "validation": None, "test": "validation"},
               note="CommitmentBank: entailment → True, contradiction → False, neutral → Neither."),
}


def _import_datasets():
    try:
        import datasets
    except ImportError as err:
        raise HubUnavailableError(
            "Hub tasks need the network and `pip install dualform[hub]` (the `datasets` package); "
            f"offline, use one of the packaged tasks instead. ({err})"
        ) from err
    return datasets


def load_hub_splits(name: str) -> tuple[TaskSpec, dict[str, list[Example] | None]]:
    """Download a hub task; returns its spec and our split name → examples (``None``: carve)."""
    hub = HUB_SPECS[name]
    datasets = _import_datasets()
    dataset, errors = None, []
    for dataset_id in hub.dataset_ids:
        try:
            dataset = datasets.load_dataset(dataset_id, hub.config)
            break
        except Exception as err:  # noqa: BLE001 - network, auth, missing id: try the next id
            errors.append(f"{dataset_id}: {err.__class__.__name__}: {err}")
    if dataset is None:
        raise HubUnavailableError(
            f"Could not load hub task {name!r}; it needs the network and `pip install "
            f"dualform[hub]`. Tried: " + "; ".join(errors)
        )
    out = {ours: None if theirs is None else _hub_examples(dataset[theirs], hub)
           for ours, theirs in hub.splits.items()}
    return hub.spec, out


def _hub_examples(rows: Iterable[dict[str, Any]], hub: HubSpec) -> list[Example]:
    examples = []
    for row in rows:
        label = int(row["label"])
        if label < 0:
            continue  # unlabelled (GLUE-style test splits)
        if hub.label_texts and row.get("label_text") is not None:
            text = str(row["label_text"]).strip().lower()
            if text not in hub.label_texts:
                raise TaskError(f"Unexpected label_text {text!r}; expected {list(hub.label_texts)}.")
            label = hub.label_texts[text]
        fields = {ours: str(row[theirs]).strip() for ours, theirs in hub.fields.items()}
        examples.append(Example(fields, label))
    return examples


# --------------------------------------------------------------------------- user files


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` (one JSON object a line) or ``.csv`` (header row) file."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return _jsonl_records(path, _utf8_text(path))
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(io.StringIO(_utf8_text(path), newline="")))
    raise TaskError(f"{path}: user data must be .jsonl or .csv, not {path.suffix!r}.")


def _utf8_text(path: Path) -> str:
    """The file's text; a missing or non-UTF-8 file raises :class:`TaskError` naming file and line."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TaskError(f"Can't read {path}: {err.strerror or err}.") from err
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TaskError(f"{path}, line {line}: not UTF-8 text (byte {err.start}); is it a "
                        "binary file?") from err


def _jsonl_records(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{path}, line {number}, column {err.colno}: not valid JSON "
                            f"({err.msg}); each line must be one JSON object.") from err
        if not isinstance(row, dict):
            raise TaskError(f"{path}, line {number}: expected a JSON object "
                            f"({{\"text\": ..., \"label\": ...}}), got {type(row).__name__}.")
        rows.append(row)
    if not rows:
        raise TaskError(f"{path} holds no examples (the file is empty).")
    return rows


def parse_label(value: Any, label_words: tuple[str, ...] | list[str], where: str) -> int:
    """An int (or digit string) indexing ``label_words``, or one of the label words."""
    if isinstance(value, bool):
        raise TaskError(f"{where}: label {value!r} is neither an index nor a label word.")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        index = int(value)
        if 0 <= index < len(label_words):
            return index
        raise TaskError(f"{where}: label index {index} is outside 0..{len(label_words) - 1}.")
    text = str(value).strip()
    lowered = [w.lower() for w in label_words]
    if text in label_words:
        return list(label_words).index(text)
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise TaskError(f"{where}: label {value!r} is not one of {list(label_words)}.")
