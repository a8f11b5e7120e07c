"""The dual form of attention, extracted from a real model with hooks (Dai et al. 2023, §3).

For one prompt = demonstrations ``X'`` followed by the query's tokens ``X``, at the last position,
per layer and query head (dropping softmax and scale):

    F_ICL(q) = W_V [X'; X] (W_K [X'; X])^T q = (W_ZSL + ΔW_ICL) q
    W_ZSL    = Σ_{query tokens j} v_j ⊗ k_j         ΔW_ICL = Σ_{demo tokens i} v_i ⊗ k_i

Keys and queries are the vectors the model's scores are computed from (after rotary, partial
rotary included), and each query head uses the keys/values of its KV head (grouped-query
attention). The identity is exact under :func:`dualform.core.relaxed.relaxed_linear_attention`;
:func:`softmax_decomposition` gives the exact split of the model's real (softmax) output.

Positional biases (ALiBi): the relaxed score is ``q · k_i + b_i``, so

    F(q) = (W_ZSL + ΔW_ICL) q + Σ_{demo i} b_i v_i + Σ_{query j} b_j v_j

and :class:`DualForm` carries the two bias sums (``bias_demo``, ``bias_query``; zero without a
bias). Logit soft-capping (Gemma-2): the relaxed form uses the *uncapped* ``q · k`` and the
softmax split the model's real (capped) scores.

On its first call for a model, :func:`dual_form` checks that the model's own attention scores
equal ``scale · (rot_q · rot_k + b)`` (soft-capped where the model caps), so that a change in
TransformerLens or transformers cannot make the dual form use the wrong vectors unnoticed.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import einsum, rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from dualform.core.equations import linear_attention, meta_gradient, softmax_split
from dualform.infra.reprs import brief_dtype
from dualform.models.compat import attention_hooks
from dualform.models.features import UnsupportedFeatureError, require_supported
from dualform.probes import (
    Capture,
    attention_scale,
    capture,
    check_context,
    repeat_kv,
    score_vector_hooks,
)


@dataclass
class DualForm:
    """ΔW_ICL, W_ZSL and the last query vector for each layer and query head."""

    delta_w_icl: Float[Tensor, "layer head d_head d_head"]
    w_zsl: Float[Tensor, "layer head d_head d_head"]
    q: Float[Tensor, "layer head d_head"]
    z: Float[Tensor, "layer head d_head"] | None
    layers: tuple[int, ...]
    demo_slice: slice
    bias_demo: Float[Tensor, "layer head d_head"] | None = None
    bias_query: Float[Tensor, "layer head d_head"] | None = None

    def linear_attention_output(self) -> Float[Tensor, "layer head d_head"]:
        """``F_ICL(q) = (W_ZSL + ΔW_ICL) q + Σ_i b_i v_i`` — the relaxed-linear-attention output."""
        return self.zsl_output() + self.icl_update()

    def icl_update(self) -> Float[Tensor, "layer head d_head"]:
        """``ΔW_ICL q + Σ_{demo i} b_i v_i`` — what the demonstrations add to the zero-shot output
        (the bias sum only with a positional bias such as ALiBi)."""
        out = linear_attention(self.delta_w_icl, self.q)
        return out if self.bias_demo is None else out + self.bias_demo

    def zsl_output(self) -> Float[Tensor, "layer head d_head"]:
        """``W_ZSL q + Σ_{query j} b_j v_j`` — the relaxed output from the query's own tokens."""
        out = linear_attention(self.w_zsl, self.q)
        return out if self.bias_query is None else out + self.bias_query

    def __repr__(self) -> str:
        n_layer, n_head, d_head = self.q.shape
        demo = self.demo_slice
        return (f"DualForm(layers={n_layer}, heads={n_head}, d_head={d_head}, "
                f"demo={demo.start}:{demo.stop} ({demo.stop - demo.start} tokens), "
                f"dtype={brief_dtype(self.q)})")

    def norms(self) -> dict[str, Float[Tensor, "layer head"]]:
        """Frobenius norms of ΔW_ICL and W_ZSL per layer and head."""
        return {
            "delta_w_icl": torch.linalg.matrix_norm(self.delta_w_icl),
            "w_zsl": torch.linalg.matrix_norm(self.w_zsl),
        }


def demo_mask(n_pos: int, n_demo_tokens: int, demo_start: int = 0) -> torch.Tensor:
    """Boolean mask over positions, True on ``[demo_start, demo_start + n_demo_tokens)``."""
    if demo_start < 0 or n_demo_tokens < 0 or demo_start + n_demo_tokens >= n_pos:
        raise ValueError(
            f"The demonstrations (positions {demo_start}..{demo_start + n_demo_tokens - 1}) must "
            f"leave at least one query token in a prompt of {n_pos} tokens."
        )
    mask = torch.zeros(n_pos, dtype=torch.bool)
    mask[demo_start : demo_start + n_demo_tokens] = True
    return mask


def score_hooks(model) -> tuple[str, ...]:
    """The hooks whose vectors the attention scores are computed from (rotated if rotary), and
    ``v``; a rotary model that hides its rotated q/k is refused (see :func:`score_vector_hooks`)."""
    return (*score_vector_hooks(model), "v")


def dual_form(
    model,
    tokens: Tensor | str,
    n_demo_tokens: int,
    *,
    demo_start: int = 0,
    layers: Sequence[int] | None = None,
    cap: Capture | None = None,
) -> DualForm:
    """ΔW_ICL / W_ZSL / q at the last position of a single prompt, per layer and query head.

    The demonstrations are positions ``[demo_start, demo_start + n_demo_tokens)`` of ``tokens``
    (a string, ``[pos]`` or ``[1, pos]``); every other position is a query token. Pass
    ``demo_start=1`` to count a leading BOS token with the query (as in a zero-shot run).
    ``cap`` reuses an existing :class:`Capture` that holds q/k/v (and z) of ``layers``.
    """
    tokens = single_prompt(model, tokens)
    bridge = require_supported(model, "dual_form", n_pos=tokens.shape[-1]) is not None
    if bridge and model not in _VERIFIED:
        verify_scores(model, tokens, layers=layers)
    if cap is None:
        with attention_hooks(model):
            cap = capture(model, tokens, hooks=(*score_hooks(model), "z"), layers=layers)
    layer_ids = tuple(cap.layers if layers is None else layers)
    return dual_form_from_vectors(
        keys=torch.stack([cap.key_vectors(layer, expand=False)[0] for layer in layer_ids]),
        values=torch.stack([cap.value_vectors(layer, expand=False)[0] for layer in layer_ids]),
        q=torch.stack([cap.query_vectors(layer)[0, -1] for layer in layer_ids]),
        z=torch.stack([cap.get("z", layer)[0, -1] for layer in layer_ids]),
        is_demo=demo_mask(tokens.shape[-1], n_demo_tokens, demo_start),
        layers=layer_ids,
        bias=positional_biases(model, layer_ids, tokens.shape[-1]),
    )


def bias_sum(bias: Float[Tensor, "*head k_pos"], values: Float[Tensor, "*head k_pos d_head"],
             keep: Bool[Tensor, " k_pos"]) -> Float[Tensor, "*head d_head"]:
    """``Σ_{i ∈ keep} b_i v_i`` per head: a positional bias's share of the relaxed output."""
    return einsum(bias[..., keep].to(values.dtype), values[..., keep, :],
                  "... pos, ... pos d -> ... d")


def positional_bias(model, layer: int, n_keys: int) -> Float[Tensor, "head k_pos"] | None:
    """The additive score bias ``b_i`` of the last query over keys ``0..n_keys-1``, in the units
    of ``q · k`` (the model adds ``scale · b_i``); ``None`` without a positional bias.

    ALiBi (BLOOM, Falcon-ALiBi): ``scale · b_i = slope_head · i`` for key position ``i`` (a
    per-query constant shift of ALiBi's ``−slope·(t − i)`` that the softmax cannot see, as the
    models compute it).
    """
    if getattr(model.cfg, "positional_embedding_type", None) != "alibi":
        return None
    from transformer_lens.model_bridge.generalized_components.alibi_utils import build_alibi_slopes

    device = next(model.parameters()).device
    slopes = build_alibi_slopes(int(model.cfg.n_heads), device).to(torch.float64)
    positions = torch.arange(n_keys, device=device, dtype=torch.float64)
    return slopes[:, None] * positions[None] / attention_scale(model, layer)


def positional_biases(model, layers: Sequence[int], n_keys: int) -> Float[Tensor, "layer head k_pos"] | None:
    """:func:`positional_bias` of ``layers`` stacked (``None`` without a positional bias)."""
    biases = [positional_bias(model, layer, n_keys) for layer in layers]
    return None if any(b is None for b in biases) else torch.stack(biases)


_VERIFIED: weakref.WeakSet = weakref.WeakSet()


class ScoreMismatchError(UnsupportedFeatureError):
    """The model's attention scores are not ``scale · (rot_q · rot_k + b)``: the captured
    vectors are not the ones its attention uses."""


def expected_scores(model, cap: Capture, layer: int) -> Float[Tensor, "batch head q_pos k_pos"]:
    """``scale · (rot_q · rot_k + b)`` from the captured vectors, soft-capped like the model
    (``cap · tanh(s / cap)``)."""
    scale = attention_scale(model, layer)
    q, k = cap.query_vectors(layer), cap.key_vectors(layer)
    scores = einsum(q, k, "batch q_pos head d, batch k_pos head d -> batch head q_pos k_pos")
    bias = positional_bias(model, layer, k.shape[1])
    if bias is not None:
        scores = scores + bias.to(scores.dtype)[None, :, None, :]
    scores = scale * scores
    softcap = getattr(model.cfg, "attn_scores_soft_cap", None)
    if softcap and softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    return scores


def score_error(model, tokens: Tensor, *, layers: Sequence[int] | None = None,
                check: bool = False) -> float:
    """``max |scores − expected_scores|`` over the causal entries of every layer; with
    ``check``, raise :class:`ScoreMismatchError` naming the model and layer above a tolerance
    of ``1000 · eps · (1 + max |scores|)``."""
    with attention_hooks(model):
        cap = capture(model, tokens, hooks=(*score_hooks(model), "attn_scores"), layers=layers)
    causal = torch.ones(tokens.shape[-1], tokens.shape[-1], dtype=torch.bool).tril()
    worst = 0.0
    for layer in cap.layers:
        real = cap.get("attn_scores", layer)[..., causal]
        expected = expected_scores(model, cap, layer)[..., causal].to(real.dtype)
        error = float((real - expected).abs().max())
        tolerance = 1e3 * torch.finfo(real.dtype).eps * (1.0 + float(real.abs().max()))
        if check and not error <= tolerance:
            name = type(getattr(model, "original_model", model)).__name__
            raise ScoreMismatchError(
                f"The attention scores of {name} layer {layer} differ from "
                f"scale·(rot_q·rot_k + bias) by {error:.3g} (tolerance {tolerance:.2g}): the "
                "captured queries/keys are not the vectors this model's attention uses (an "
                "attention feature dualform does not cover, or a TransformerLens/transformers "
                "change). Refusing to compute the dual form.")
        worst = max(worst, error)
    return worst


def verify_scores(model, tokens: Tensor, *, layers: Sequence[int] | None = None) -> None:
    """:func:`score_error` with ``check=True``, once per model (remembered while it lives)."""
    score_error(model, tokens, layers=layers, check=True)
    _VERIFIED.add(model)


def dual_form_from_vectors(
    keys: Float[Tensor, "layer pos kv_head d_head"],
    values: Float[Tensor, "layer pos kv_head d_head"],
    q: Float[Tensor, "layer head d_head"],
    z: Float[Tensor, "layer head d_head"] | None,
    is_demo: Bool[Tensor, " all_pos"],
    layers: tuple[int, ...],
    bias: Float[Tensor, "layer head all_pos"] | None = None,
    *,
    prefix_sums: tuple[Tensor, Tensor] | None = None,
) -> DualForm:
    """The dual form of one prompt from its keys and values at every position and its last query.

    The one place ΔW_ICL and W_ZSL are assembled, whether the vectors come from one full forward
    (:func:`dual_form`) or from a cached demonstration prefix plus a query batch row
    (:mod:`dualform.experiments.dai.conditions`). Each query head gets its KV head's matrices;
    ``bias`` (ALiBi, :func:`positional_biases`) adds ``Σ_i b_i v_i`` split into demo and query.

    ``prefix_sums`` — :func:`split_meta_gradient` of a prefix already summed (a cached prefix's
    ``(ΔW_ICL, W_ZSL)`` per layer and KV head, computed once for many queries): ``keys`` and
    ``values`` then hold only the positions after it, ``is_demo`` still covers every position.
    The sums are additive over positions, so both ways give the same matrices.
    """
    n_pos, n_all = keys.shape[1], is_demo.shape[0]
    fits = n_pos <= n_all if prefix_sums is not None else n_pos == n_all  # a prefix: fewer keys
    if not fits:
        raise ValueError(f"{n_pos} key positions but an is_demo mask over {n_all}")
    if bias is not None and prefix_sums is not None:
        raise ValueError("positional biases need the values at every position (no prefix_sums)")
    k, v = (rearrange(t, "layer pos kv_head d -> layer kv_head pos d") for t in (keys, values))
    delta_w_icl, w_zsl = split_meta_gradient(k, v, is_demo[n_all - n_pos :])
    if prefix_sums is not None:
        delta_w_icl, w_zsl = delta_w_icl + prefix_sums[0], w_zsl + prefix_sums[1]
    n_heads = q.shape[1]
    demo = torch.nonzero(is_demo).flatten()
    demo_slice = slice(int(demo[0]), int(demo[-1]) + 1) if demo.numel() else slice(0, 0)
    bias_demo = bias_query = None
    if bias is not None:  # ALiBi: Σ_i b_i v_i, per query head
        v_heads = repeat_kv(v, n_heads, dim=1)
        bias_demo = bias_sum(bias, v_heads, is_demo)
        bias_query = bias_sum(bias, v_heads, ~is_demo)
    return DualForm(repeat_kv(delta_w_icl, n_heads, dim=1), repeat_kv(w_zsl, n_heads, dim=1),
                    q, z, layers, demo_slice, bias_demo, bias_query)


def split_meta_gradient(
    keys: Float[Tensor, "*head pos d_head"],
    values: Float[Tensor, "*head pos d_head"],
    is_demo: Bool[Tensor, " pos"],
) -> tuple[Float[Tensor, "*head d_head d_head"], Float[Tensor, "*head d_head d_head"]]:
    """``(ΔW_ICL, W_ZSL) = (Σ_{i ∈ demo} v_i ⊗ k_i, Σ_{j ∉ demo} v_j ⊗ k_j)`` over one prompt's
    positions; ``is_demo`` is a boolean mask over ``pos``."""
    return (meta_gradient(values[..., is_demo, :], keys[..., is_demo, :]),
            meta_gradient(values[..., ~is_demo, :], keys[..., ~is_demo, :]))


def single_prompt(model, tokens: Tensor | str) -> Tensor:
    """``tokens`` (a string, ``[pos]`` or ``[1, pos]``) as one ``[1, pos]`` prompt."""
    if isinstance(tokens, str):
        tokens = model.to_tokens(tokens, truncate=False)  # too long: an error, never truncated
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.shape[0] != 1:
        raise ValueError(f"dual_form takes one prompt; got a batch of {tokens.shape[0]}.")
    check_context(model, tokens.shape[-1])
    return tokens


@dataclass
class SoftmaxSplit:
    """``z = λ · z_demo + (1 − λ) · z_query`` per layer and head at one position."""

    lam: Float[Tensor, "layer head"]
    z_demo: Float[Tensor, "layer head d_head"]
    z_query: Float[Tensor, "layer head d_head"]
    z: Float[Tensor, "layer head d_head"]
    layers: tuple[int, ...]

    def __repr__(self) -> str:
        n_layer, n_head, d_head = self.z.shape
        return (f"SoftmaxSplit(layers={n_layer}, heads={n_head}, d_head={d_head}, "
                f"mean λ={self.lam.float().mean():.3f}, dtype={brief_dtype(self.z)})")

    def recombined(self) -> Float[Tensor, "layer head d_head"]:
        lam = self.lam.unsqueeze(-1)
        return lam * self.z_demo + (1 - lam) * self.z_query


def softmax_decomposition(
    model,
    tokens: Tensor | str,
    n_demo_tokens: int,
    *,
    demo_start: int = 0,
    position: int = -1,
    layers: Sequence[int] | None = None,
) -> SoftmaxSplit:
    """Exact demo/query split of the model's real softmax attention output at ``position``.

    Uses the model's real pre-softmax scores: soft-capped where the model caps, with the
    positional bias (ALiBi) where it has one."""
    tokens = single_prompt(model, tokens)
    require_supported(model, "softmax_decomposition", n_pos=tokens.shape[-1])
    with attention_hooks(model):
        cap = capture(model, tokens, hooks=("attn_scores", "v", "z"), layers=layers)
    is_demo = demo_mask(tokens.shape[-1], n_demo_tokens, demo_start)
    parts = []
    for layer in cap.layers:
        scores = cap.get("attn_scores", layer)[0, :, position]  # [head, k_pos]
        values = cap.value_vectors(layer)[0].transpose(0, 1)  # [head, pos, d_head]
        parts.append(softmax_split(scores, values, is_demo))
    lam, z_demo, z_query = (torch.stack(p) for p in zip(*parts, strict=True))
    z = cap.stack("z")[:, 0, position]
    return SoftmaxSplit(lam, z_demo, z_query, z, cap.layers)
