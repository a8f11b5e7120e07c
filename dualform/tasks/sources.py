"""Where task examples come from: lexicons shipped by PyPI packages, and user files.

Offline sources (no network, real human labels; located with ``importlib.util.find_spec`` so the
packages are never imported):

* ``afinn`` — ``afinn/data/AFINN-en-165.txt``: 3,382 English words and phrases rated by a human
  annotator on an integer scale −5…+5 (Nielsen 2011). Two words rated 0 are dropped.
* ``vaderSentiment`` — ``vaderSentiment/vader_lexicon.txt``: ≈7,500 tokens, each rated by ten
  raters on −4…+4; the file holds the mean and standard deviation (Hutto & Gilbert 2014). Only
  lower-case alphabetic words are used (no emoticons or abbreviations with digits/punctuation).
* ``countryinfo`` — ``countryinfo/data*/*.json``: countries and territories with capital and
  UN region (Africa, Americas, Asia, Europe, Oceania).
* ``textblob`` — ``textblob/en/en-sentiment.xml``: the Pattern subjectivity lexicon (De Smedt &
  Daelemans 2012), 2,918 word senses of 1,528 English words (mostly adjectives from product
  reviews), each annotated by hand with a polarity and a subjectivity from 0.0 (objective) to
  1.0 (subjective) and a confidence of 0.8–0.9.

Every builder returns a :class:`TaskSpec` (template, label words, description, source) plus the
pool of :class:`Example` objects; :mod:`dualform.tasks.prompts` (which re-exports ``Example`` and the
errors) splits the pool. The Hugging Face hub tasks (Dai et al.'s datasets) are in
:mod:`dualform.tasks.hub`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
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


def textblob_subjectivity_senses() -> dict[str, list[float]]:
    """Pattern / TextBlob lexicon: lower-case word → hand-tagged subjectivity of each sense."""
    path = package_file("textblob", "en/en-sentiment.xml")
    senses: dict[str, list[float]] = {}
    for node in ElementTree.parse(path).getroot().iter("word"):
        word = node.get("form", "").strip()
        if _WORD.fullmatch(word):
            senses.setdefault(word, []).append(float(node.get("subjectivity", "nan")))
    return senses


# --------------------------------------------------------------------------- offline tasks

SENTIMENT_2 = ("Negative", "Positive")
SENTIMENT_5 = ("terrible", "bad", "neutral", "good", "great")
VALENCE = ("unpleasant", "pleasant")
REGIONS = ("Africa", "Americas", "Asia", "Europe")
SUBJECTIVITY = ("objective", "subjective")
#: A TextBlob word is objective when every sense has subjectivity ≤ this, subjective when every
#: sense has ≥ ``SUBJECTIVE_MIN``; words in between (or with mixed senses) are left out.
OBJECTIVE_MAX, SUBJECTIVE_MIN = 0.1, 0.8
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


def textblob_subjectivity() -> tuple[TaskSpec, list[Example]]:
    """TextBlob words: every sense ≤ 0.1 → objective (0), every sense ≥ 0.8 → subjective (1)."""
    spec = TaskSpec(
        "Input: {x} Type: {y}", SUBJECTIVITY,
        "Subjectivity of English words (Pattern/TextBlob lexicon, hand-tagged per sense: every "
        f"sense ≤ {OBJECTIVE_MAX} objective, every sense ≥ {SUBJECTIVE_MIN} subjective).",
        "textblob: en/en-sentiment.xml",
    )
    pool = []
    for word, values in textblob_subjectivity_senses().items():
        if max(values) <= OBJECTIVE_MAX:
            pool.append(_word(word, 0))
        elif min(values) >= SUBJECTIVE_MIN:
            pool.append(_word(word, 1))
    return spec, pool


OFFLINE_BUILDERS: dict[str, Callable[[], tuple[TaskSpec, list[Example]]]] = {
    "afinn-sentiment": afinn_sentiment,
    "afinn-sentiment-5": afinn_sentiment5,
    "vader-valence": vader_valence,
    "country-region": country_region,
    "capital-region": capital_region,
    "textblob-subjectivity": textblob_subjectivity,
}


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
