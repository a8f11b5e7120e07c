"""Training and evaluation data for the momentum experiment.

Two sources, one interface (:class:`Source`: ``train_batch``, ``eval_windows``, ``icl_prompts``):

* **text** — a real corpus (TinyStories or WikiText-103) through ``datasets`` when the network
  (or the local HF cache) is there, or any local UTF-8 text file; byte-level tokens (``byte + 3``,
  ids 0–2 are BOS/EOS/PAD), so a from-scratch model needs no tokenizer download.
* **recall** (the offline fallback, documented in the results) — *in-context associative
  recall*: each sequence draws its own random dictionary ``key → value`` and then lists pairs
  ``k v k v …`` with keys drawn with replacement, so a value is predictable exactly when its key
  appeared earlier **in the context**. Perplexity therefore falls with context length (as for
  text), and in-context-learning accuracy can be measured exactly.

ICL accuracy (both sources): a prompt of ``n_demos`` demonstrations ``k_1 v_1 … k_n v_n`` (distinct
keys, fresh random values) followed by a query key ``k_j`` from the demonstrations; the prediction
is the argmax of the last position's logits over the value tokens (Dai's "argmax over the label
words"), gold = ``v_j``. Chance = 1 / number of value tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Int
from torch import Tensor

BOS, EOS, PAD = 0, 1, 2
N_SPECIAL = 3
TEXT_CORPORA = {
    "tinystories": ("roneneldan/TinyStories", None, "text"),
    "wikitext103": ("wikitext", "wikitext-103-raw-v1", "text"),
}


@dataclass(frozen=True)
class RecallSpec:
    """Which token ids are keys and which are values."""

    key_ids: tuple[int, ...]
    value_ids: tuple[int, ...]

    @classmethod
    def synthetic(cls, n_keys: int, n_values: int) -> RecallSpec:
        keys = tuple(range(N_SPECIAL, N_SPECIAL + n_keys))
        return cls(keys, tuple(range(keys[-1] + 1, keys[-1] + 1 + n_values)))

    @classmethod
    def bytes_letters_digits(cls) -> RecallSpec:
        """Keys = lowercase letters, values = digits, as byte tokens (for text-trained models)."""
        letters = tuple(N_SPECIAL + b for b in b"abcdefghijklmnopqrstuvwxyz")
        return cls(letters, tuple(N_SPECIAL + b for b in b"0123456789"))

    @property
    def d_vocab(self) -> int:
        return max(*self.key_ids, *self.value_ids) + 1


def recall_sequences(
    n: int, seq_len: int, spec: RecallSpec, gen: torch.Generator
) -> Int[Tensor, "n seq_len"]:
    """``BOS k v k v …`` with one random dictionary per sequence; keys drawn with replacement."""
    keys_t, values_t = torch.tensor(spec.key_ids), torch.tensor(spec.value_ids)
    n_pairs = seq_len // 2
    table = torch.randint(len(values_t), (n, len(keys_t)), generator=gen)  # dictionary
    key_idx = torch.randint(len(keys_t), (n, n_pairs), generator=gen)
    val_idx = torch.gather(table, 1, key_idx)
    pairs = torch.stack([keys_t[key_idx], values_t[val_idx]], dim=-1)
    body = rearrange(pairs, "n pair two -> n (pair two)")
    bos = torch.full((n, 1), BOS, dtype=body.dtype)
    return torch.cat([bos, body], dim=1)[:, :seq_len]


def recall_icl_prompts(
    n: int, n_demos: int, spec: RecallSpec, gen: torch.Generator
) -> tuple[Int[Tensor, "n pos"], Int[Tensor, " n"]]:
    """``BOS k_1 v_1 … k_n v_n k_q`` with distinct demo keys; returns (prompts, gold value ids)."""
    if n_demos > len(spec.key_ids):
        raise ValueError(f"{n_demos} demonstrations need {n_demos} distinct keys.")
    keys_t, values_t = torch.tensor(spec.key_ids), torch.tensor(spec.value_ids)
    key_idx = torch.argsort(torch.rand(n, len(keys_t), generator=gen), dim=1)[:, :n_demos]
    val_idx = torch.randint(len(values_t), (n, n_demos), generator=gen)
    pairs = torch.stack([keys_t[key_idx], values_t[val_idx]], dim=-1)
    query = torch.randint(n_demos, (n, 1), generator=gen)
    query_key = keys_t[torch.gather(key_idx, 1, query)]
    gold = values_t[torch.gather(val_idx, 1, query)].squeeze(1)
    bos = torch.full((n, 1), BOS, dtype=pairs.dtype)
    prompts = torch.cat([bos, rearrange(pairs, "n d two -> n (d two)"), query_key], dim=1)
    return prompts, gold


class Source:
    """Recall data, or a byte-tokenised text stream when ``text_tokens`` is given."""

    def __init__(
        self,
        spec: RecallSpec,
        text_tokens: Tensor | None = None,
        name: str = "recall",
        eval_fraction: float = 0.05,
    ) -> None:
        self.spec, self.name = spec, name
        self.train_stream = self.eval_stream = None
        if text_tokens is not None:
            cut = int(len(text_tokens) * (1 - eval_fraction))
            self.train_stream, self.eval_stream = text_tokens[:cut], text_tokens[cut:]

    @property
    def d_vocab(self) -> int:
        return 256 + N_SPECIAL if self.train_stream is not None else self.spec.d_vocab

    def train_batch(self, batch: int, seq_len: int, gen: torch.Generator) -> Tensor:
        """``[batch, seq_len]`` training tokens starting with BOS."""
        if self.train_stream is None:
            return recall_sequences(batch, seq_len, self.spec, gen)
        starts = torch.randint(len(self.train_stream) - seq_len, (batch,), generator=gen)
        return _with_bos(torch.stack([self.train_stream[s : s + seq_len - 1] for s in starts]))

    def eval_windows(self, ctx: int, n_tokens: int, split: str = "test") -> Tensor:
        """Held-out ``[n, ctx]`` windows (BOS + ctx−1 tokens), ``n·ctx ≈ n_tokens``.

        ``split="validation"`` (hyper-parameter choice) and ``"test"`` (reported numbers) are
        disjoint: different seeds for recall data, the two halves of the held-out text.
        """
        n = max(1, n_tokens // ctx)
        if self.eval_stream is None:
            seed = {"validation": 54321, "test": 12345}[split]
            return recall_sequences(n, ctx, self.spec, torch.Generator().manual_seed(seed))
        half = len(self.eval_stream) // 2
        stream = self.eval_stream[:half] if split == "validation" else self.eval_stream[half:]
        usable = min(n, len(stream) // (ctx - 1))
        body = stream[: usable * (ctx - 1)]
        return _with_bos(rearrange(body, "(n c) -> n c", c=ctx - 1))

    def icl_prompts(self, n: int, n_demos: int, seed: int = 999) -> tuple[Tensor, Tensor]:
        return recall_icl_prompts(n, n_demos, self.spec, torch.Generator().manual_seed(seed))


def _with_bos(body: Tensor) -> Tensor:
    bos = torch.full((body.shape[0], 1), BOS, dtype=body.dtype)
    return torch.cat([bos, body], dim=1)


def bytes_to_tokens(text: str) -> Int[Tensor, " n"]:
    """UTF-8 bytes shifted past the three special ids."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long) + N_SPECIAL


def load_text(corpus: str, max_chars: int, timeout: float = 3.0) -> str | None:
    """Text of a hub corpus (``datasets``, imported lazily) or a local file; ``None`` if neither.

    Hub corpora are tried only when huggingface.co answers within ``timeout`` seconds or the
    data is in the local cache (``HF_DATASETS_OFFLINE=1``), so an offline run falls back fast.
    """
    from pathlib import Path

    if Path(corpus).is_file():
        return Path(corpus).read_text(encoding="utf-8", errors="replace")[:max_chars]
    if corpus not in TEXT_CORPORA:
        return None
    try:
        import datasets  # noqa: F401  (optional dependency: pip install dualform[hub])
    except ImportError:
        return None
    if not _hub_reachable(timeout):
        return None
    return _hub_text(corpus, max_chars)


def _hub_reachable(timeout: float) -> bool:
    import os
    import socket

    if os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_text(corpus: str, max_chars: int) -> str | None:
    from datasets import load_dataset

    path, name, field = TEXT_CORPORA[corpus]
    try:
        rows = load_dataset(path, name, split="train", streaming=True)
        parts, total = [], 0
        for row in rows:
            parts.append(row[field])
            total += len(row[field])
            if total >= max_chars:
                break
    except Exception:  # noqa: BLE001 — any hub/network failure means "fall back"
        return None
    return "\n".join(parts)[:max_chars]


def make_source(
    corpus: str, n_keys: int, n_values: int, max_chars: int = 20_000_000
) -> tuple[Source, list[str]]:
    """``corpus`` ∈ {auto, recall, tinystories, wikitext103, path}; returns (source, notes)."""
    notes: list[str] = []
    if corpus != "recall":
        wanted = "tinystories" if corpus == "auto" else corpus
        text = load_text(wanted, max_chars)
        if text is not None and len(text) > 10_000:
            spec = RecallSpec.bytes_letters_digits()
            return Source(spec, bytes_to_tokens(text), name=wanted), notes
        notes.append(
            f"corpus {wanted!r} unavailable (no network/cache or file); fell back to the "
            "offline in-context associative-recall corpus"
        )
    return Source(RecallSpec.synthetic(n_keys, n_values), name="recall"), notes


def demo_counts(values: Sequence[int], spec: RecallSpec) -> list[int]:
    """Keep only demonstration counts the key set can support."""
    return [d for d in values if d <= len(spec.key_ids)]
