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
from jaxtyping import Float
from torch import Tensor

from dualform.core.dual_form import (
    DualForm,
    demo_mask,
    dual_form,
    dual_form_from_vectors,
    score_hooks,
)
from dualform.core.prefix import PrefixRun, auto_batch_size, pad_queries
from dualform.infra.reprs import compact_repr
from dualform.probes import capture
from dualform.tasks.prompts import Example, Prompt, PromptTokens, Task, build_prompt, prompt_tokens

RECORD_HOOKS = ("attn_out", "z", "scores", "q")


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
    rec = _record_at(cap, _stacked(cap), label_ids, row=0, last=last, n_keys=last + 1)
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
        start = self.icl.demo_start + self.icl.n_demo_tokens
        return slice(start, None)

    @property
    def query_slice_zsl(self) -> slice:
        return slice(self.zsl.demo_start, None)

    @property
    def demo_slice(self) -> slice:
        return slice(self.icl.demo_start, self.icl.demo_start + self.icl.n_demo_tokens)


def prompt_pair(model, task: Task, demos: list[Example], query: Example) -> PromptPair:
    icl = prompt_tokens(model, build_prompt(task, demos, query))
    zsl = prompt_tokens(model, build_prompt(task, [], query))
    return PromptPair(icl, zsl)


def demo_training_texts(model, task: Task, demos: list[Example]) -> list[Tensor]:
    """The FT training sequences: each demonstration's tokens exactly as in the ICL prompt.

    Each formatted demonstration (with its separator) is tokenised on its own with a BOS in
    front, so that concatenating them without the BOS gives the ICL prompt's demonstration span
    token for token (checked by :func:`dualform.tasks.prompts.prompt_tokens`).
    """
    texts = []
    for demo in demos:
        one = Prompt(task.format(demo) + "\n", "", (demo,), demo, "\n")
        pt = prompt_tokens(model, one, check=False)
        texts.append(pt.tokens[0, : pt.demo_start + pt.n_demo_tokens])
    return texts


@torch.no_grad()
def record_batch(
    run: PrefixRun, queries: list[Tensor], label_ids: list[int], *, demo: PromptTokens | None = None
) -> list[Record]:
    """:func:`record` for a batch of queries on top of a :class:`PrefixRun` (same numbers).

    ``queries`` are the query-token tensors that follow the prefix. With ``demo`` (the prefix's
    demonstration span) the dual form comes too: ΔW_ICL is built once from the cached prefix.
    """
    model = run.model
    batch = pad_queries(queries, pad_id=0)  # right padding is never attended to
    cap = run.run(batch, (*RECORD_HOOKS, *(score_hooks(model) if demo else ())))
    stacked = _stacked(cap)
    records = []
    for row, last in enumerate(batch.last.tolist()):
        rec = _record_at(cap, stacked, label_ids, row=row, last=last, n_keys=run.length + last + 1)
        if demo is not None:
            _attach_dual(rec, run, cap, demo, row, last)
        records.append(rec)
    return records


def _stacked(cap) -> dict[str, Tensor]:
    return {name: cap.stack(name) for name in RECORD_HOOKS}


def _record_at(cap, stacked: dict[str, Tensor], label_ids: list[int], *, row: int, last: int,
               n_keys: int) -> Record:
    """The :class:`Record` of batch row ``row`` read at its last real position ``last``; its
    score row keeps the first ``n_keys`` keys (prefix + the query's real tokens)."""
    return Record(
        label_logits=cap.logits[row, last, label_ids].float().cpu(),
        attn_out=stacked["attn_out"][:, row, last].float().cpu(),
        z=stacked["z"][:, row, last].float().cpu(),
        scores=stacked["scores"][:, row, :, last, :n_keys].float().cpu().clone(),
        q=stacked["q"][:, row, last].float().cpu(),
    )


def _attach_dual(rec: Record, run: PrefixRun, cap, demo: PromptTokens, row: int, last: int) -> None:
    """The dual form of batch row ``row``: the prefix's keys/values followed by the row's own."""
    prefix = run.capture
    keys = torch.stack([torch.cat([prefix.key_vectors(layer, expand=False)[0],
                                   cap.key_vectors(layer, expand=False)[row, : last + 1]])
                        for layer in cap.layers])
    values = torch.stack([torch.cat([prefix.value_vectors(layer, expand=False)[0],
                                     cap.value_vectors(layer, expand=False)[row, : last + 1]])
                          for layer in cap.layers])
    q = torch.stack([cap.query_vectors(layer)[row, last] for layer in cap.layers])
    is_demo = demo_mask(keys.shape[1], demo.n_demo_tokens, demo.demo_start)
    _store_dual(rec, dual_form_from_vectors(keys, values, q, None, is_demo, cap.layers))


def _store_dual(rec: Record, dual: DualForm) -> None:
    norms = dual.norms()
    rec.icl_update = dual.icl_update().float().cpu()
    rec.norm_delta_w_icl = norms["delta_w_icl"].float().cpu()
    rec.norm_w_zsl = norms["w_zsl"].float().cpu()


def record_all(model, prompts: list[PromptTokens], label_ids: list[int], *, dual: bool = False,
               reuse_prefix: bool = True, batch_size: int | None = None) -> list[Record]:
    """Records of prompts that share their prefix (BOS [+ demonstrations]).

    ``reuse_prefix`` runs the shared prefix once and the queries in right-padded batches on its
    KV cache; otherwise each prompt is one full forward (the naive baseline; same numbers).
    ``batch_size=None`` picks the batch from free memory (:func:`auto_batch_size`).
    """
    if not reuse_prefix:
        return [record(model, p.tokens, label_ids, demo=p if dual else None) for p in prompts]
    first = prompts[0]
    n_prefix = first.demo_start + first.n_demo_tokens
    if batch_size is None:
        longest = max(p.tokens.shape[-1] for p in prompts)
        batch_size = auto_batch_size(model, longest, longest - n_prefix)
    run = PrefixRun(model, first.tokens[:, :n_prefix], hooks=score_hooks(model) if dual else ())
    records: list[Record] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        queries = [p.tokens[0, n_prefix:] for p in chunk]
        records.extend(record_batch(run, queries, label_ids, demo=first if dual else None))
    return records
