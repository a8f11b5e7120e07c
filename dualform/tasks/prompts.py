"""Classification tasks for ICL-vs-finetuning experiments: templates, label words, splits, prompts.

A :class:`Task` is a template (``"Sentence: {x} Label: {y}"``), its label words and examples
split into ``train`` / ``validation`` / ``test``.

>>> task = load_task("afinn-sentiment", seed=0)
>>> demos = sample_demos(task, k=8, seed=1)
>>> prompt = build_prompt(task, demos, task.test[0])
>>> pt = prompt_tokens(model, prompt)          # tokens [1, pos], n_demo_tokens, demo_start
>>> logits = model(pt.tokens)[0, -1, label_token_ids(model, task)]

**Where the label's space goes.** The whitespace between the label prefix and ``{y}`` belongs to
the label, not to the prompt: ``task.format(ex, with_label=False)`` ends with ``"... Label:"``
(no trailing space) and the label continuation is ``" Positive"``. Byte-pair tokenizers fold a
leading space into the next word, so ``" Positive"`` is the single token the model would
naturally produce next; a prompt ending in a space would instead ask the model for a rare
space-less ``"Positive"`` token. :func:`label_token_ids` tokenizes each continuation exactly as
it appears after the prefix.

**Prompts.** Demonstrations are joined with ``separator`` (default ``"\\n"``), which also follows
the last demonstration; the query follows without a label. :func:`prompt_tokens` tokenizes the
demonstration part and the query part separately and concatenates the ids, so
``n_demo_tokens`` is exact; it checks that this equals the tokenization of the whole text (true
for a newline separator with byte-level BPE tokenizers, where a token never spans a newline and
the next word) and raises :class:`PromptTokenizationError` otherwise.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from dualform.infra.reprs import compact_repr
from dualform.probes import ContextLengthError, check_context
from dualform.tasks.hub import HUB_SPECS, load_hub_splits
from dualform.tasks.sources import (
    OFFLINE_BUILDERS,
    Example,
    HubUnavailableError,
    TaskError,
    TaskSpec,
    parse_label,
    read_records,
)
from dualform.tasks.splits import split_hub, split_pool

__all__ = [
    "HUB_TASKS", "OFFLINE_TASKS", "ContextLengthError", "Example", "HubUnavailableError",
    "LabelTokenError", "Prompt", "PromptTokenizationError", "PromptTokens", "Task", "TaskError",
    "build_prompt", "check_context", "check_task_name", "label_token_ids", "label_token_sequences", "load_task",
    "load_user_task", "prompt_tokens", "sample_demos",
]

OFFLINE_TASKS: tuple[str, ...] = tuple(OFFLINE_BUILDERS)
HUB_TASKS: tuple[str, ...] = tuple(HUB_SPECS)


class LabelTokenError(TaskError):
    """Two label words start with the same token: a next-token prediction can't tell them apart."""


class PromptTokenizationError(TaskError):
    """Tokenizing demonstrations and query separately differs from tokenizing the whole prompt."""


# --------------------------------------------------------------------------- tasks


@dataclass(repr=False)
class Task:
    """A template, its label words and examples in three disjoint splits."""

    name: str
    template: str
    label_words: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    description: str = ""
    source: str = ""
    _prefix: str = field(init=False, default="")
    _label_sep: str = field(init=False, default="")
    _suffix: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.label_words = list(self.label_words)
        names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        if names.count("y") != 1:
            raise TaskError(f"Template {self.template!r} must contain '{{y}}' exactly once.")
        before, self._suffix = self.template.split("{y}", 1)
        self._prefix = before.rstrip()
        self._label_sep = before[len(self._prefix):]

    @property
    def fields(self) -> tuple[str, ...]:
        """Template fields other than ``y`` (``("x",)`` or e.g. ``("premise", "hypothesis")``)."""
        names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
        return tuple(dict.fromkeys(n for n in names if n != "y"))

    @property
    def n_classes(self) -> int:
        return len(self.label_words)

    @property
    def label_continuations(self) -> list[str]:
        """What follows ``format(ex, with_label=False)`` for each label: ``[" Negative", ...]``."""
        return [self._label_sep + word for word in self.label_words]

    @property
    def label_anchor(self) -> str:
        """The fixed template text right before the label (``" Label:"``), for tokenizing it."""
        tail = self._prefix.rsplit("}", 1)[-1] if "}" in self._prefix else self._prefix
        return tail.replace("{{", "{")

    def format(self, example: Example, with_label: bool = True) -> str:
        """The example in the template; without label, the text up to the label prefix
        (``"Word: great Sentiment:"``, no trailing space)."""
        missing = [f for f in self.fields if f not in example.fields]
        if missing:
            raise TaskError(f"Example {example.fields} lacks template field(s) {missing}.")
        prefix = self._prefix.format(**example.fields)
        if not with_label:
            return prefix
        label = self.label_continuations[example.label]
        return prefix + label + self._suffix.format(**example.fields)

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "validation", "test"):
            raise TaskError(f"Unknown split {name!r}; choose train, validation or test.")
        return getattr(self, name)

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, template={self.template!r}, label_words={self.label_words}, "
            f"train={len(self.train)}, validation={len(self.validation)}, test={len(self.test)})"
        )


def load_task(
    name: str,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    hub_dir: str | Path | None = None,
) -> Task:
    """A packaged offline task (:data:`OFFLINE_TASKS`) or one of Dai et al.'s hub tasks
    (:data:`HUB_TASKS`, needs ``pip install dualform[hub]`` and the network, or ``hub_dir``: a
    folder of local copies of the hub repositories, ``<hub_dir>/<owner>/<name>``).

    Offline tasks are class-balanced (every class cut to the smallest one) and split from one
    pool (rules in :mod:`dualform.tasks.splits`): ``test`` is drawn first, then ``validation``,
    then ``train`` gets ``n_train`` (default: all the rest), so changing ``n_train`` never
    changes the evaluation sets. ``None`` sizes default to 25% (test, at most 400) and 12.5%
    (validation, at most 200) of the pool. Hub tasks keep the hub's splits (not balanced;
    missing splits are carved from train, duplicates of evaluation inputs are removed from
    train); ``None`` sizes keep them whole (a carved validation split: 10% of train, ≤ 200).
    """
    sizes = {"test": n_test, "validation": n_validation, "train": n_train}
    if name in OFFLINE_BUILDERS:
        spec, pool = OFFLINE_BUILDERS[name]()
        splits = split_pool(pool, len(spec.label_words), sizes, seed=seed, balanced=True, name=name)
        return _make_task(name, spec, splits)
    check_task_name(name)
    spec, hub_splits = load_hub_splits(name, hub_dir)
    return _make_task(name, spec, split_hub(hub_splits, sizes, seed))


def check_task_name(name: str) -> None:
    """Raise :class:`TaskError` listing the known tasks unless ``name`` is one of them."""
    if name not in OFFLINE_BUILDERS and name not in HUB_SPECS:
        raise TaskError(
            f"Unknown task {name!r}. Offline: {', '.join(OFFLINE_TASKS)}; hub (network + "
            f"`pip install dualform[hub]`): {', '.join(HUB_TASKS)}; or load_user_task(path, ...)."
        )


def load_user_task(
    path: str | Path,
    template: str,
    label_words: Sequence[str],
    *,
    text_field: str = "text",
    label_field: str = "label",
    seed: int = 0,
    n_train: int | None = None,
    n_validation: int | None = None,
    n_test: int | None = None,
    balanced: bool = False,
    name: str | None = None,
) -> Task:
    """A task from a ``.jsonl`` or ``.csv`` file; labels are indices or label words.

    ``{x}`` in the template is filled from ``text_field``; any other field (``{premise}``) from
    the column of that name. Splits as in :func:`load_task` (``balanced=True`` cuts every class
    to the smallest one first); duplicate inputs are kept once (first occurrence).
    """
    path = Path(path)
    probe = Task(name or path.stem, template, list(label_words), [], [], [])
    pool = []
    for i, row in enumerate(read_records(path), start=1):
        where = f"{path} record {i}"
        columns = {f: text_field if f == "x" else f for f in probe.fields}
        missing = [c for c in (*columns.values(), label_field) if c not in row]
        if missing:
            raise TaskError(f"{where} lacks column(s) {missing}; it has {sorted(row)}.")
        fields = {f: str(row[c]).strip() for f, c in columns.items()}
        pool.append(Example(fields, parse_label(row[label_field], probe.label_words, where)))
    spec = TaskSpec(template, tuple(label_words), f"User data from {path.name}.", str(path))
    sizes = {"test": n_test, "validation": n_validation, "train": n_train}
    splits = split_pool(pool, probe.n_classes, sizes, seed=seed, balanced=balanced, name=probe.name)
    empty = [s for s in ("train", "validation", "test") if not splits[s]]
    if empty:
        raise TaskError(
            f"{path}: {len(pool)} example(s) leave the {', '.join(empty)} split(s) empty "
            f"(train {len(splits['train'])}, validation {len(splits['validation'])}, test "
            f"{len(splits['test'])}); add examples or set n_test / n_validation / n_train."
        )
    return _make_task(probe.name, spec, splits)


def _make_task(name: str, spec: TaskSpec, splits: dict[str, list[Example]]) -> Task:
    return Task(name, spec.template, list(spec.label_words), splits["train"],
                splits["validation"], splits["test"], spec.description, spec.source)


# --------------------------------------------------------------------------- demonstrations


def sample_demos(task: Task, k: int, seed: int) -> list[Example]:
    """``k`` training examples, class-balanced as far as possible, in a seeded random order.

    Classes are visited round-robin (in a seeded order), so class counts differ by at most one
    unless a class runs out of training examples.
    """
    if not 0 <= k <= len(task.train):
        raise TaskError(
            f"Can't sample {k} demonstrations from {len(task.train)} training examples."
        )
    rng = random.Random(seed)
    pools = [[e for e in task.train if e.label == c] for c in range(task.n_classes)]
    for pool in pools:
        rng.shuffle(pool)
    order = list(range(task.n_classes))
    rng.shuffle(order)
    chosen: list[Example] = []
    while len(chosen) < k:
        for c in order:
            if pools[c] and len(chosen) < k:
                chosen.append(pools[c].pop())
    rng.shuffle(chosen)
    return chosen


# --------------------------------------------------------------------------- tokens


def _tokenizer(tokenizer_or_model):
    return getattr(tokenizer_or_model, "tokenizer", None) or tokenizer_or_model


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def label_token_sequences(tokenizer_or_model, task: Task) -> list[list[int]]:
    """All token ids of each label continuation (``" Positive"``) as it follows the prefix.

    Tokenizes ``anchor + continuation`` and drops the anchor's tokens, where the anchor is the
    template text right before the label (``" Label:"``), so tokenizers that treat a leading
    space specially (SentencePiece) give the in-context ids.
    """
    tok = _tokenizer(tokenizer_or_model)
    anchor = task.label_anchor
    anchor_ids = _encode(tok, anchor)
    sequences = []
    for word, continuation in zip(task.label_words, task.label_continuations, strict=True):
        full = _encode(tok, anchor + continuation)
        if full[: len(anchor_ids)] != anchor_ids or len(full) == len(anchor_ids):
            raise LabelTokenError(
                f"Label word {word!r} merges with the template text {anchor!r} when tokenized; "
                "put a space (or other separator) between the label prefix and {y}."
            )
        sequences.append(full[len(anchor_ids):])
    return sequences


def label_token_ids(tokenizer_or_model, task: Task) -> list[int]:
    """The id of each label word's first token after the prompt prefix (with its leading space).

    Multi-token label words are scored by their first token, which must then differ between all
    label words; otherwise :class:`LabelTokenError` names the colliding words.
    """
    tok = _tokenizer(tokenizer_or_model)
    firsts = [seq[0] for seq in label_token_sequences(tok, task)]
    clashes: dict[int, list[str]] = {}
    for word, first in zip(task.label_words, firsts, strict=True):
        clashes.setdefault(first, []).append(word)
    clashes = {i: words for i, words in clashes.items() if len(words) > 1}
    if clashes:
        detail = "; ".join(f"{words} all start with token {i} ({tok.decode([i])!r})"
                           for i, words in clashes.items())
        raise LabelTokenError(
            f"Task {task.name!r}: label words can't be told apart by their first token "
            f"after {task.label_anchor!r}: {detail}. Choose other label words or another template."
        )
    return firsts


@dataclass(frozen=True)
class Prompt:
    """An ICL prompt: demonstrations (each followed by ``separator``) then the unlabelled query."""

    demo_text: str
    query_text: str
    demos: tuple[Example, ...]
    query: Example
    separator: str

    __repr__ = compact_repr

    @property
    def text(self) -> str:
        return self.demo_text + self.query_text


def build_prompt(
    task: Task, demos: Sequence[Example], query: Example, *, separator: str = "\n"
) -> Prompt:
    """``demo_1 + sep + ... + demo_k + sep + query_prefix``; no demos gives the zero-shot prompt."""
    demo_text = "".join(task.format(d, with_label=True) + separator for d in demos)
    return Prompt(demo_text, task.format(query, with_label=False), tuple(demos), query, separator)


class PromptTokens(NamedTuple):
    """``tokens [1, pos]``; demonstrations at ``[demo_start, demo_start + n_demo_tokens)``."""

    tokens: Int[Tensor, "1 pos"]
    n_demo_tokens: int
    demo_start: int

    __repr__ = compact_repr

    @property
    def n_prefix(self) -> int:
        """Tokens up to the end of the demonstrations (BOS included): the shared prefix."""
        return self.demo_start + self.n_demo_tokens

    @property
    def n_query_tokens(self) -> int:
        """Tokens of the query itself (BOS not counted)."""
        return self.tokens.shape[-1] - self.n_prefix


def prompt_tokens(
    model, prompt: Prompt, *, prepend_bos: bool | None = None, check: bool = True
) -> PromptTokens:
    """Token ids of a prompt with the exact demonstration span (pass to ``dual_form``).

    A BOS token is prepended when the model does so by default (``model.cfg.default_prepend_bos``)
    and then counted separately: ``demo_start = 1``. ``check`` verifies that tokenizing the two
    parts separately equals tokenizing the whole text (see the module docstring).
    """
    tok = _tokenizer(model)
    demo_ids, query_ids = _encode(tok, prompt.demo_text), _encode(tok, prompt.query_text)
    if check and demo_ids + query_ids != _encode(tok, prompt.text):
        raise PromptTokenizationError(
            f"Tokenizing the demonstrations and the query separately differs from tokenizing the "
            f"whole prompt at their boundary (separator {prompt.separator!r}); use a separator "
            "ending in a newline, or pass check=False to accept the split tokenization."
        )
    cfg = getattr(model, "cfg", None)
    if prepend_bos is None:
        prepend_bos = bool(getattr(cfg, "default_prepend_bos", True))
    bos = [tok.bos_token_id] if prepend_bos and tok.bos_token_id is not None else []
    ids = bos + demo_ids + query_ids
    if cfg is not None:
        check_context(model, len(ids))
    device = getattr(cfg, "device", None) or "cpu"
    return PromptTokens(torch.tensor([ids], device=device), len(demo_ids), len(bos))
