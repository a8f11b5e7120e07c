"""Head-by-head attribution: which heads carry ICL, which carry finetuning, and do they agree?

For every (layer, head), on the correct-label logit margin ``m`` at the last token:

* **ICL** — the effect of removing that head's demonstration contribution from the ICL run.
  By the softmax split ``z = λ z_demo + (1 − λ) z_query``, removing the demonstrations from a
  head's attention turns its output into ``z_query``; the effect is ``m(z_query) − m(z)``.
* **FT** — the effect of reverting that head's K/V finetuning update in the FT run:
  ``m(W_FT − ΔW_head) − m(W_FT)``. With grouped-query attention an update belongs to a KV head,
  so the effect of a KV head is reported for each query head of its group.

Both are computed by first-order *attribution patching* (one forward + one backward per run):
``Δm ≈ ∇_z m · (z_query − z)`` and ``Δm ≈ −∇_W m · ΔW_head``. :func:`icl_head_effects_exact`
gives the exact ablation for checking (a forward per head).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.stats
import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from dualform.core.dual_form import demo_mask
from dualform.core.equations import ft_patch_effect, icl_patch_effect, label_margin, softmax_split
from dualform.core.finetune import FinetuneResult, kv_parameters
from dualform.core.prefix import logits_at, pad_queries
from dualform.probes import capture, head_counts, hook_name, hooks, repeat_kv


def icl_head_effects(
    model, tokens: Tensor, demo: slice, label_ids: list[int], gold: int, *, prefix=None
) -> Float[Tensor, "layer head"]:
    """First-order effect on the margin of removing each head's demonstration contribution.

    With ``prefix`` (a :class:`dualform.core.prefix.PrefixRun` holding BOS + demonstrations, run with
    the ``v`` hook) ``tokens`` are only the query tokens after it; ``demo`` indexes the prefix.
    """
    if prefix is not None:
        return icl_head_effects_batch(prefix, [tokens.reshape(-1)], demo, label_ids, [gold])[0]
    tokens = tokens.reshape(1, -1)
    with torch.enable_grad(), differentiable_embeddings(model):
        cap = capture(model, tokens, hooks=("attn_scores", "v", "z"), detach=False)
        margin = label_margin(cap.logits[0, -1, label_ids], gold)
        grads = torch.autograd.grad(margin, [cap.get("z", layer) for layer in cap.layers])
    last = tokens.shape[-1] - 1
    return _row_effects(cap, grads, row=0, last=last, prefix_values=None, demo=demo)


def icl_head_effects_batch(
    prefix, queries: list[Tensor], demo: slice, label_ids: list[int], golds: list[int]
) -> Float[Tensor, "batch layer head"]:
    """:func:`icl_head_effects` of several queries on one demonstration prefix, in one
    right-padded forward + backward. Rows do not interact (a real token never attends to a later
    pad), so the gradient of the summed margins holds each row's own gradient."""
    batch = pad_queries(queries, pad_id=0)
    with torch.enable_grad(), differentiable_embeddings(prefix.model):
        cap = prefix.run(batch, ("attn_scores", "v", "z"), detach=False, last_logits=True)
        lasts = batch.last.tolist()
        margin = sum(label_margin(cap.logits[row, 0, label_ids], gold)
                     for row, (_, gold) in enumerate(zip(lasts, golds, strict=True)))
        grads = torch.autograd.grad(margin, [cap.get("z", layer) for layer in cap.layers])
    values = [prefix.capture.value_vectors(layer)[0] for layer in cap.layers]
    return torch.stack([_row_effects(cap, grads, row=row, last=last, prefix_values=values, demo=demo)
                        for row, last in enumerate(lasts)])


@contextmanager
def differentiable_embeddings(model) -> Iterator[None]:
    """Within the block the token embeddings start the autograd graph, so the activations have
    gradients even when every weight is frozen (``requires_grad=False``)."""
    def start_graph(embedded: Tensor, hook) -> Tensor:
        return embedded if embedded.requires_grad else embedded.detach().requires_grad_(True)

    name = "hook_embed" if "hook_embed" in model.hook_dict else hook_name("resid_pre", 0)
    with hooks(model, [(name, start_graph)]):
        yield


def _row_effects(cap, grads, *, row: int, last: int, prefix_values: list[Tensor] | None,
                 demo: slice) -> Float[Tensor, "layer head"]:
    """``∇_z m · (z_query − z)`` per layer and head for one batch row read at ``last``."""
    n_prefix = 0 if prefix_values is None else prefix_values[0].shape[0]
    is_demo = demo_mask(n_prefix + last + 1, demo.stop - demo.start, demo.start)
    effects = []
    for i, (layer, grad) in enumerate(zip(cap.layers, grads, strict=True)):
        scores = cap.get("attn_scores", layer)[row, :, last, : n_prefix + last + 1].detach()
        values = cap.value_vectors(layer)[row, : last + 1].detach()
        if prefix_values is not None:
            values = torch.cat([prefix_values[i], values])
        values = rearrange(values, "key head d -> head key d")
        _, _, z_query = softmax_split(scores.double(), values.double(), is_demo)
        z = cap.get("z", layer)[row, last].detach()
        effects.append(icl_patch_effect(grad[row, last].double(), z_query, z.double()))
    return torch.stack(effects).float()


def icl_head_effects_exact(
    model, tokens: Tensor, demo: slice, label_ids: list[int], gold: int
) -> Float[Tensor, "layer head"]:
    """Exact effect of each removal: one forward per head with that head's demo columns of the
    last query row zeroed and the row renormalised."""
    n_layers, (n_heads, _) = model.cfg.n_layers, head_counts(model)
    with torch.no_grad():
        base = label_margin(model(tokens)[0, -1, label_ids], gold)
        out = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            for head in range(n_heads):
                fn = partial(_drop_demo_columns, head=head, demo=demo)
                with hooks(model, [(hook_name("pattern", layer), fn)]):
                    out[layer, head] = label_margin(model(tokens)[0, -1, label_ids], gold) - base
    return out


def _drop_demo_columns(pattern: Tensor, hook, *, head: int, demo: slice) -> Tensor:
    pattern = pattern.clone()
    row = pattern[:, head, -1]
    row[..., demo] = 0
    pattern[:, head, -1] = row / row.sum(-1, keepdim=True)
    return pattern


def ft_head_effects(
    result: FinetuneResult, tokens: Tensor, label_ids: list[int], gold: int
) -> Float[Tensor, "layer head"]:
    """First-order effect on the margin of reverting each KV head's K/V update in the FT model."""
    return ft_head_effects_mean(result, [tokens.reshape(-1)], label_ids, [gold])


def ft_head_effects_mean(
    result: FinetuneResult, queries: list[Tensor], label_ids: list[int], golds: list[int]
) -> Float[Tensor, "layer head"]:
    """The mean of :func:`ft_head_effects` over several prompts, from one right-padded forward +
    backward: the effect ``−∇_W m · ΔW`` is linear in the gradient, so the mean effect is the
    effect of the mean margin's gradient."""
    batch = pad_queries(queries, pad_id=0)
    with result.loaded() as model:  # a grid row lends its weights: no copy
        params = kv_parameters(model)
        tokens = batch.tokens.to(next(model.parameters()).device)
        with torch.enable_grad():
            for p in params.values():
                p.requires_grad_(True)
            try:
                with logits_at(model, batch.last) as pick:  # unembed the last tokens only
                    logits = pick(model(tokens))
                margin = sum(label_margin(logits[row, 0, label_ids], gold)
                             for row, (_, gold) in enumerate(zip(queries, golds, strict=True)))
                grads = torch.autograd.grad(margin / len(queries), list(params.values()))
            finally:
                for p in params.values():
                    p.requires_grad_(False)
    n_heads, n_kv = head_counts(model)
    per_kv = torch.zeros(model.cfg.n_layers, n_kv, dtype=torch.float64)
    for name, grad in zip(params, grads, strict=True):
        layer = int(name.split(".")[1])
        grad, delta = (rearrange(t.double(), "(kv d) ... -> kv d ...", kv=n_kv)
                       for t in (grad, result.delta_w[name]))
        per_kv[layer] += ft_patch_effect(grad, delta)
    return repeat_kv(per_kv, n_heads, dim=1).float()


@dataclass
class HeadAttribution:
    """Mean per-head effects of the two interventions and their rank agreement."""

    icl: Float[np.ndarray, "layer head"]
    ft: Float[np.ndarray, "layer head"]
    spearman: float
    kendall: float

    def __repr__(self) -> str:
        n_layer, n_head = self.icl.shape
        return (f"HeadAttribution(layers={n_layer}, heads={n_head}, "
                f"spearman={self.spearman:.3f}, kendall={self.kendall:.3f})")

    def to_dict(self) -> dict:
        return {"icl": self.icl.tolist(), "ft": self.ft.tolist(),
                "spearman": self.spearman, "kendall": self.kendall}


def compare_maps(icl: np.ndarray, ft: np.ndarray) -> HeadAttribution:
    """Rank correlation (over all layer×head cells) of the two mean effect maps."""
    a, b = np.asarray(icl, dtype=np.float64), np.asarray(ft, dtype=np.float64)
    rho = float(scipy.stats.spearmanr(a.ravel(), b.ravel())[0])
    tau = float(scipy.stats.kendalltau(a.ravel(), b.ravel())[0])
    return HeadAttribution(a, b, rho, tau)
