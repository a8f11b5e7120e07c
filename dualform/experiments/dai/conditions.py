"""The three conditions of Dai et al., recorded at the last prompt token.

* ZSL — the query alone on the pretrained model;
* ICL — demonstrations + query on the pretrained model;
* FT  — the query alone on the model after ``finetune_kv`` on the same demonstrations.

For each run we keep only what the metrics need, at the last position (the one that predicts
the label): label-word logits, the attention output of every layer (after W_O, before the
residual add), ``hook_z`` per head, the last row of the pre-softmax scores and the raw query
vector. All of it comes from one forward with focused hooks (see :mod:`dualform.probes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from dualform.core.dual_form import (
    DualForm,
    demo_mask,
    dual_form,
    dual_form_from_vectors,
    positional_biases,
    score_hooks,
    split_meta_gradient,
)
from dualform.core.prefix import PrefixRun, auto_batch_size, logits_at, pad_queries
from dualform.errors import DualformError
from dualform.infra.reprs import compact_repr
from dualform.probes import capture
from dualform.tasks.prompts import Example, Prompt, PromptTokens, Task, build_prompt, prompt_tokens

RECORD_HOOKS = ("attn_out", "z", "attn_scores", "q")


@dataclass
class Record:
    """One run of one condition, at the last token."""

    label_logits: Float[Tensor, " label"]
    attn_out: Float[Tensor, "layer d_model"]
    z: Float[Tensor, "layer head d_head"]
    scores: Float[Tensor, "layer head k_pos"]
    q: Float[Tensor, "layer head d_head"]
    icl_update: Float[Tensor, "layer head d_head"] | None = None
    norm_delta_w_icl: Float[Tensor, "layer head"] | None = None
    norm_w_zsl: Float[Tensor, "layer head"] | None = None

    __repr__ = compact_repr

    @property
    def prediction(self) -> int:
        return int(self.label_logits.argmax())


@torch.no_grad()
def record(model, tokens: Tensor, label_ids: list[int], *, demo: PromptTokens | None = None) -> Record:
    """Run ``tokens`` (``[1, pos]``) and keep the last-token quantities of every layer.

    With ``demo`` (the ICL prompt's :class:`PromptTokens`) the same forward also yields the
    dual form: ``ΔW_ICL q`` and the norms of ΔW_ICL and W_ZSL per layer and head.
    """
    extra = score_hooks(model) if demo is not None else ()
    cap = capture(model, tokens, hooks=(*RECORD_HOOKS, *extra))
    last = tokens.shape[-1] - 1
    rec = _record_at(cap, _last_positions(cap, [last]), label_ids, row=0, n_keys=last + 1,
                     logit_pos=last)
    if demo is not None:
        _store_dual(rec, dual_form(model, tokens, demo.n_demo_tokens,
                                   demo_start=demo.demo_start, cap=cap))
    return rec


@dataclass
class PromptPair:
    """Token ids of one query with and without the demonstrations."""

    icl: PromptTokens
    zsl: PromptTokens

    __repr__ = compact_repr

    @property
    def query_slice_icl(self) -> slice:
        """Key positions of the query's own tokens in the ICL prompt."""
        return slice(self.icl.n_prefix, None)

    @property
    def query_slice_zsl(self) -> slice:
        return slice(self.zsl.demo_start, None)

    @property
    def demo_slice(self) -> slice:
        return slice(self.icl.demo_start, self.icl.n_prefix)


def prompt_pair(model, task: Task, demos: list[Example], query: Example) -> PromptPair:
    icl = prompt_tokens(model, build_prompt(task, demos, query))
    zsl = prompt_tokens(model, build_prompt(task, [], query))
    return PromptPair(icl, zsl)


def demo_training_texts(model, task: Task, demos: list[Example], *,
                        keep_separator: bool = False) -> list[Tensor]:
    """The FT training sequences, one per demonstration: BOS + its tokens as in the ICL prompt.

    Official convention (``get_data_for_ft`` of ``microsoft/LMOps`` understand_icl): each
    demonstration is trained on *without* its end-of-demonstration separator (the ``"\\n"``
    that follows it in the ICL prompt). ``keep_separator=True`` trains on demonstration +
    separator instead, so the texts concatenated without their BOS are the ICL prompt's whole
    demonstration span. Either way the tokens are those of the ICL prompt (checked by
    :func:`demo_layout`).
    """
    layout = demo_layout(model, task, demos)
    return [text[: len(text) - (0 if keep_separator else n_sep)]
            for text, n_sep in zip(layout.texts, layout.n_separator, strict=True)]


@dataclass(frozen=True)
class RankedTokens:
    """The demonstration tokens Kendall and top-k recall rank: ``positions`` index the ICL
    prompt's demonstration span; ``segments`` count them per demonstration (example level)."""

    positions: tuple[int, ...]
    segments: tuple[int, ...]


@dataclass(frozen=True)
class DemoLayout:
    """Token layout of the demonstration span: each demonstration's own tokens, then its
    separator's; ``texts`` are the BOS + demonstration + separator token sequences."""

    n_tokens: tuple[int, ...]
    n_separator: tuple[int, ...]
    texts: tuple[Tensor, ...]
    n_bos: int = 1

    def ranked(self, *, keep_separator: bool = False) -> RankedTokens:
        """The ranked tokens: the demonstrations' own tokens (official: the separators are left
        out, as ``slice_icl_attn_map`` skips them), or every token with ``keep_separator``."""
        positions, segments, start = [], [], 0
        for n, n_sep in zip(self.n_tokens, self.n_separator, strict=True):
            kept = n + n_sep if keep_separator else n
            positions.extend(range(start, start + kept))
            segments.append(kept)
            start += n + n_sep
        return RankedTokens(tuple(positions), tuple(segments))


class DemoLayoutError(DualformError, ValueError):
    """A demonstration's tokens change when its separator follows (they would not align)."""


def demo_layout(model, task: Task, demos: list[Example], separator: str = "\n") -> DemoLayout:
    """Each demonstration tokenised alone (BOS + text) and with its separator; the demonstration's
    tokens must be a prefix of the latter, and all of them together the ICL prompt's span."""
    if not demos:
        raise DemoLayoutError("Finetuning needs at least one demonstration.")
    n_tokens, n_sep, texts, n_bos = [], [], [], 0
    for demo in demos:
        (bare, n_bos), (full, _) = (_bos_tokens(model, task.format(demo) + tail, demo, separator)
                                    for tail in ("", separator))
        if not torch.equal(full[: len(bare)], bare):
            raise DemoLayoutError(
                f"Finetuning texts without the separator {separator!r}: demonstration "
                f"{task.format(demo)!r} tokenises differently when the separator follows; "
                "use keep_separator=True (train on demonstration + separator).")
        n_tokens.append(len(bare) - n_bos)
        n_sep.append(len(full) - len(bare))
        texts.append(full)
    span = prompt_tokens(model, build_prompt(task, demos, demos[0], separator=separator), check=False)
    ids = span.tokens[0, span.demo_start : span.n_prefix].cpu()
    if not torch.equal(torch.cat([t[n_bos:].cpu() for t in texts]), ids):
        raise DemoLayoutError("Demonstrations tokenised one by one differ from the ICL prompt's "
                              "demonstration span; the finetuning texts would not align with it.")
    return DemoLayout(tuple(n_tokens), tuple(n_sep), tuple(texts), n_bos)


def _bos_tokens(model, text: str, demo: Example, separator: str) -> tuple[Tensor, int]:
    """BOS + ``text`` as :func:`prompt_tokens` builds it (1-D), and the number of BOS tokens."""
    pt = prompt_tokens(model, Prompt(text, "", (demo,), demo, separator), check=False)
    return pt.tokens[0, : pt.n_prefix], pt.demo_start


@torch.no_grad()
def record_batch(
    run: PrefixRun, queries: list[Tensor], label_ids: list[int], *, demo: PromptTokens | None = None,
    sums: tuple[Tensor, Tensor] | None = None,
) -> list[Record]:
    """:func:`record` for a batch of queries on top of a :class:`PrefixRun` (same numbers).

    ``queries`` are the query-token tensors that follow the prefix. With ``demo`` (the prefix's
    demonstration span) the dual form comes too: ΔW_ICL is built once from the cached prefix
    (``sums``: :func:`prefix_sums` of ``run`` when the caller already has it, as
    :func:`record_all` does for all its batches).
    """
    model = run.model
    batch = pad_queries(queries, pad_id=0)  # right padding is never attended to
    cap = run.run(batch, (*RECORD_HOOKS, *(score_hooks(model) if demo else ())), last_logits=True)
    lasts = batch.last.tolist()
    at_last = _last_positions(cap, lasts)
    if demo is not None and sums is None:
        sums = prefix_sums(run, demo)
    records = []
    for row, last in enumerate(lasts):
        rec = _record_at(cap, at_last, label_ids, row=row, n_keys=run.length + last + 1, logit_pos=0)
        if demo is not None:
            _attach_dual(rec, run, cap, demo, row, last, sums)
        records.append(rec)
    return records


def _last_positions(cap, lasts: list[int]) -> dict[str, Tensor]:
    """Each of :data:`RECORD_HOOKS` at every row's last real position ``lasts[row]``, stacked
    over layers: ``[layer, batch, ...]`` (the score rows ``[layer, batch, head, k_pos]``). Only
    those positions are gathered, not every position of the batch's activations."""
    rows, at = torch.arange(len(lasts)), torch.tensor(lasts)
    out = {}
    for name in RECORD_HOOKS:
        per_layer = []
        for layer in cap.layers:
            t = cap[name, layer]  # [batch, pos, ...]; the scores [batch, head, q_pos, k_pos]
            r, a = rows.to(t.device), at.to(t.device)  # a dispatched model's layers may differ
            per_layer.append(t[r, :, a] if name == "attn_scores" else t[r, a])
        out[name] = torch.stack(per_layer)
    return out


def _record_at(cap, at_last: dict[str, Tensor], label_ids: list[int], *, row: int, n_keys: int,
               logit_pos: int) -> Record:
    """The :class:`Record` of batch row ``row`` from :func:`_last_positions`; its score row keeps
    the first ``n_keys`` keys (prefix + the query's real tokens). The logits are read at
    ``logit_pos`` (the row's last position, or 0 for :meth:`PrefixRun.run`'s ``last_logits``)."""
    return Record(
        label_logits=_own(cap.logits[row, logit_pos, label_ids]),
        attn_out=_own(at_last["attn_out"][:, row]),
        z=_own(at_last["z"][:, row]),
        scores=_own(at_last["attn_scores"][:, row, :, :n_keys]),
        q=_own(at_last["q"][:, row]),
    )


def _own(t: Tensor) -> Tensor:
    """A float32 CPU copy that owns its memory: a slice of a float32 CPU capture would be a view
    keeping the whole batch's activations alive for as long as the record lives."""
    return t.detach().to("cpu", torch.float32, copy=True)


def _attach_dual(rec: Record, run: PrefixRun, cap, demo: PromptTokens, row: int, last: int,
                 sums: tuple[Tensor, Tensor] | None) -> None:
    """The dual form of batch row ``row``: the prefix's keys/values followed by the row's own;
    with ``sums`` (:func:`prefix_sums`, once per batch) the prefix enters as its sums."""
    def vectors(name: str) -> Tensor:  # [layer, pos, kv_head, d_head]
        per_layer = [getattr(cap, name)(layer, expand=False)[row, : last + 1] for layer in cap.layers]
        if sums is None:  # ALiBi: the biases weigh every value, so every vector is needed
            per_layer = [torch.cat([getattr(run.capture, name)(layer, expand=False)[0], own])
                         for layer, own in zip(cap.layers, per_layer, strict=True)]
        return torch.stack(per_layer)

    q = torch.stack([cap.query_vectors(layer)[row, last] for layer in cap.layers])
    n_all = run.length + last + 1
    is_demo = demo_mask(n_all, demo.n_demo_tokens, demo.demo_start)
    bias = positional_biases(run.model, cap.layers, n_all) if sums is None else None
    _store_dual(rec, dual_form_from_vectors(vectors("key_vectors"), vectors("value_vectors"), q,
                                            None, is_demo, cap.layers, bias, prefix_sums=sums))


def prefix_sums(run: PrefixRun, demo: PromptTokens) -> tuple[Tensor, Tensor] | None:
    """``(ΔW_ICL, W_ZSL)`` of the cached prefix, per layer and KV head (``None`` under ALiBi,
    whose biases depend on the query's position)."""
    prefix = run.capture
    layers = prefix.layers
    if positional_biases(run.model, layers, run.length) is not None:
        return None
    k, v = (rearrange(torch.stack([get(layer, expand=False)[0] for layer in layers]),
                      "layer pos kv_head d -> layer kv_head pos d")
            for get in (prefix.key_vectors, prefix.value_vectors))
    is_demo = demo_mask(run.length + 1, demo.n_demo_tokens, demo.demo_start)[:-1]  # queries follow
    return split_meta_gradient(k, v, is_demo)


def _store_dual(rec: Record, dual: DualForm) -> None:
    norms = dual.norms()
    rec.icl_update = _own(dual.icl_update())
    rec.norm_delta_w_icl = _own(norms["delta_w_icl"])
    rec.norm_w_zsl = _own(norms["w_zsl"])


def record_all(model, prompts: list[PromptTokens], label_ids: list[int], *, dual: bool = False,
               reuse_prefix: bool = True, batch_size: int | None = None,
               run: PrefixRun | None = None) -> list[Record]:
    """Records of prompts that share their prefix (BOS [+ demonstrations]).

    ``reuse_prefix`` runs the shared prefix once and the queries in right-padded batches on its
    KV cache; otherwise each prompt is one full forward (the naive baseline; same numbers).
    ``batch_size=None`` picks the batch from free memory (:func:`auto_batch_size`). ``run``: that
    prefix already run (:func:`prefix_run`), e.g. shared with the head attribution.
    """
    if not reuse_prefix:
        return [record(model, p.tokens, label_ids, demo=p if dual else None) for p in prompts]
    first = prompts[0]
    n_prefix = first.n_prefix
    if batch_size is None:
        longest = max(p.tokens.shape[-1] for p in prompts)
        batch_size = auto_batch_size(model, longest, longest - n_prefix)
    run = run or prefix_run(model, first, dual=dual)
    if run.length != n_prefix:
        raise ValueError(f"The prefix run holds {run.length} tokens; these prompts share {n_prefix}")
    sums = prefix_sums(run, first) if dual else None  # the same for every query batch
    records: list[Record] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        queries = [p.tokens[0, n_prefix:] for p in chunk]
        records.extend(record_batch(run, queries, label_ids, demo=first if dual else None, sums=sums))
    return records


#: Finetuning texts per forward when their queries are recorded (32 short texts: one batch).
TRAINING_QUERY_BATCH = 32


def prefix_run(model, prompt: PromptTokens, *, dual: bool = True) -> PrefixRun:
    """BOS + demonstrations of ``prompt`` run once (with ``dual``, the hooks the dual form and the
    head attribution read: the score vectors and ``v``)."""
    return PrefixRun(model, prompt.tokens[:, : prompt.n_prefix], hooks=score_hooks(model) if dual else ())


@torch.no_grad()
def training_queries(model, task: Task, demos: list[Example], batched: bool = True, *,
                     keep_separator: bool = False) -> torch.Tensor:
    """Raw query vectors of every token of the finetuning texts (BOS dropped):
    ``[layer, n_tokens, d]``; ``batched`` runs the texts as right-padded batches of
    :data:`TRAINING_QUERY_BATCH`."""
    texts = demo_training_texts(model, task, demos, keep_separator=keep_separator)
    bos = prompt_tokens(model, build_prompt(task, [], demos[0]), check=False).demo_start
    size = TRAINING_QUERY_BATCH if batched else 1
    rows = []
    for start in range(0, len(texts), size):
        chunk = texts[start : start + size]
        batch = pad_queries(chunk, pad_id=0)
        with logits_at(model, batch.last):  # no logit is read: unembed one token per row
            q = capture(model, batch.tokens, hooks=("q",)).stack("q")  # [layer, batch, pos, head, d]
        for row, last in enumerate(batch.last.tolist()):
            rows.append(q[:, row, bos : last + 1].flatten(-2))  # BOS dropped, if any
    return torch.cat(rows, dim=1).float().cpu()
