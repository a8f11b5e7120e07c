"""Demonstration-prefix reuse: run the demonstrations once, then only the query tokens.

ICL costs are dominated by re-reading the same k demonstrations for every query. A
:class:`PrefixRun` runs ``BOS + demonstrations`` once, keeps the Hugging Face KV cache underneath
the bridge, and runs batches of queries on top of it. The probes still see everything the
metrics need: the query positions' q/k/v/z, their score rows over *all* keys (cached prefix
keys included), and the prefix's own keys/values captured once.

Queries are right-padded: a real token never attends to a later (pad) position, so no attention
mask is needed and each row is read at its own last real position.

On the plain bridge attention (every block, by
:func:`~dualform.models.compat.prefix_attention.model_applies`: e.g. Llama-style models such as
SmolLM2) the query batches read the batch-1 cache directly (:func:`~dualform.models.compat.prefix_attention.shared_prefix_attention`):
no per-row copy of the prefix's keys and values. Elsewhere each batch gets its own copy of the
cache and the bridge's own attention; TransformerLens 4.3 reads the cache from the
``past_key_values`` keyword while transformers 5.x passes it as ``cache``, which
:func:`dualform.models.compat.kv_cache` bridges for the duration of each forward here, so the
caller's model is left as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from dualform.infra.reprs import compact_repr
from dualform.models.compat import attention_hooks, kv_cache
from dualform.models.compat.prefix_attention import model_applies, shared_prefix_attention
from dualform.probes import Capture, capture, head_counts, hooks


def new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.original_model.config)


@dataclass
class QueryBatch:
    """Right-padded query tokens and each row's last real index."""

    tokens: Int[Tensor, "batch q_pos"]
    last: Int[Tensor, " batch"]

    __repr__ = compact_repr


def pad_tokens(
    seqs: Sequence[Tensor], pad_id: int, *, side: str = "right"
) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Token sequences of different lengths as one ``[batch, pos]`` batch padded with
    ``pad_id`` on the ``side`` given, and the mask of real tokens. The one padding function:
    query batches on a prefix and finetuning batches pad right (a real token never attends to
    a later pad), the momentum ablation pads left (every prompt ends at the last position)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    flat = [s.reshape(-1) for s in seqs]
    width = max(len(s) for s in flat)
    tokens = torch.full((len(flat), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(flat), width), dtype=torch.bool)
    for row, s in enumerate(flat):
        span = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        tokens[row, span], mask[row, span] = s, True
    return tokens, mask


def pad_queries(queries: Sequence[Tensor], pad_id: int) -> QueryBatch:
    """Right-padded query tokens and each row's last real index."""
    tokens, mask = pad_tokens(queries, pad_id)
    return QueryBatch(tokens, mask.sum(-1) - 1)


UNEMBED_IN = "unembed.hook_in"


@contextmanager
def logits_at(model, positions: Int[Tensor, " batch"]) -> Iterator[Callable[[Tensor], Tensor]]:
    """Within the block the model unembeds only position ``positions[row]`` of each row, and
    ``pick(logits)`` gives those logits as ``[batch, 1, vocab]``.

    A query batch reads its logits at one position per row; the unembedding (``d_model × vocab``,
    about a quarter of SmolLM2-135M's forward) then runs on those positions alone: a hook on
    ``unembed.hook_in`` gathers them. A bridge without that hook runs in full and ``pick``
    gathers from the full logits (the same numbers)."""
    rows = torch.arange(len(positions))
    if UNEMBED_IN not in model.hook_dict:
        yield lambda logits: logits[rows.to(logits.device), positions.to(logits.device)][:, None]
        return

    def gather(resid: Tensor, hook) -> Tensor:  # [batch, pos, d_model] → [batch, 1, d_model]
        return resid[rows.to(resid.device), positions.to(resid.device)][:, None]

    with hooks(model, [(UNEMBED_IN, gather)]):
        yield lambda logits: logits


class PrefixRun:
    """A prefix (``[1, P]`` tokens) run once; :meth:`run` runs query batches on top of it.

    An empty prefix (a zero-shot prompt of a tokenizer without BOS, e.g. GPT-2's) needs no
    cache: the queries then run on their own."""

    def __init__(self, model, prefix: Tensor, hooks: Sequence[str] = ()) -> None:
        self.model = model
        self.prefix = prefix.reshape(1, -1)
        self.length = self.prefix.shape[-1]
        self.cache = new_cache(model) if self.length else None
        self.shared = bool(self.length) and model_applies(model)  # queries read the cache in place
        device = next(model.parameters()).device
        if not self.length:
            self.capture = Capture({}, *head_counts(model))
            return
        last = torch.tensor([self.length - 1])  # its logits are never read: unembed one token
        with torch.no_grad(), kv_cache(model), attention_hooks(model), logits_at(model, last) as pick:
            self.capture: Capture = capture(
                model, self.prefix.to(device), hooks=hooks, cache=self.cache, use_cache=True
            )
            self.capture.logits = pick(self.capture.logits)

    def __repr__(self) -> str:
        return (f"PrefixRun(prefix={self.length} tokens, model=<{type(self.model).__name__}>, "
                f"capture={self.capture!r})")

    def _cache_for(self, batch: int):
        cache = copy.deepcopy(self.cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def run(self, queries: QueryBatch, names: Sequence[str], *, detach: bool = True,
            last_logits: bool = False) -> Capture:
        """Capture ``names`` on the query tokens; scores/patterns span prefix + query keys.
        ``last_logits``: unembed only each row's last real token (:func:`logits_at`); the
        capture's logits are then ``[batch, 1, vocab]``."""
        device = next(self.model.parameters()).device
        tokens = queries.tokens.to(device)
        shared = self.shared and model_applies(self.model)  # e.g. not since a .train()
        cached = {}
        if self.cache is not None:
            cache = self.cache if shared else self._cache_for(tokens.shape[0])
            cached = {"cache": cache, "use_cache": True}
        with (torch.set_grad_enabled(not detach and torch.is_grad_enabled()),
              kv_cache(self.model), attention_hooks(self.model),
              shared_prefix_attention(self.model) if shared else nullcontext()):
            if not last_logits:
                cap = capture(self.model, tokens, hooks=names, detach=detach, **cached)
            else:
                with logits_at(self.model, queries.last) as pick:
                    cap = capture(self.model, tokens, hooks=names, detach=detach, **cached)
                cap.logits = pick(cap.logits)
        if shared and self.cache.get_seq_length() != self.length:
            raise RuntimeError(f"the shared prefix cache was written ({self.length} → "
                               f"{self.cache.get_seq_length()} positions): a dualform bug")
        return cap

    def prefix_kv(self, layer: int, *, rotated: bool = True) -> tuple[Tensor, Tensor]:
        """The prefix's keys (rotated when captured) and values, per query head: ``[pos, head, d]``."""
        cap = self.capture
        return (cap.key_vectors(layer, rotated=rotated)[0], cap.value_vectors(layer)[0])


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of ``device``: the GPU's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


#: Largest query batch on a CPU: with oneDNN linears (:mod:`dualform.models.cpu_matmul`) 200
#: zero-shot queries of afinn-sentiment are recorded in 1.53 s in batches of 32 against 1.91 s
#: in batches of 16 (1.46 s in batches of 64).
CPU_BATCH_CAP = 32


def auto_batch_size(model, n_keys: int, n_query: int, *, free_bytes: int | None = None,
                    fraction: float = 0.25, cap: int | None = None, backward: bool = False) -> int:
    """The largest query batch whose per-row memory fits in ``fraction`` of free memory.

    Per row and layer: the copied KV cache (``2·kv_heads·d_head·n_keys``), the captured score
    rows (``heads·n_query·n_keys``, twice: scores and pattern) and the per-token activations
    (``~8·d_model·n_query``), in the model's dtype; with ``backward`` (attribution) also the
    keys and values expanded to every query head that autograd keeps (``2·heads·d_head·n_keys``).
    Capped at :data:`CPU_BATCH_CAP` on CPU (larger batches stop paying off there) and 64 on
    GPU unless ``cap`` says otherwise.
    """
    device = next(model.parameters()).device
    cfg = model.cfg
    n_heads, n_kv = head_counts(model)
    kv_heads_kept = n_kv + (n_heads if backward else 0)
    per_layer = (2 * kv_heads_kept * cfg.d_head * n_keys + 2 * n_heads * n_query * n_keys
                 + 8 * cfg.d_model * n_query)
    per_row = cfg.n_layers * per_layer * next(model.parameters()).element_size()
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    cap = cap or (64 if device.type == "cuda" else CPU_BATCH_CAP)
    return int(max(1, min(cap, fraction * free // per_row)))
