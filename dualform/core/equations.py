"""The dual-form equations of Dai et al. (2023), one function each.

Every function here is a single equation of the paper, written on plain tensors so that it can
be checked in float64 against an independent computation (see ``tests/test_equations.py``).
Shapes follow TransformerLens: ``pos`` for token positions, ``d_head`` for a head's width.
"""

from __future__ import annotations

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor


def meta_gradient(
    values: Float[Tensor, "... pos d_head"], keys: Float[Tensor, "... pos d_head"]
) -> Float[Tensor, "... d_head d_head"]:
    """Sum of value-key outer products over positions: ``Σ_i v_i ⊗ k_i = V^T K``.

    Over demonstration tokens this is ΔW_ICL (the "meta-gradient"); over the query's own tokens
    it is W_ZSL. Row index = value dimension, column index = key dimension, so that
    ``(Σ_i v_i ⊗ k_i) q = Σ_i v_i (k_i · q)`` is relaxed linear attention.
    """
    return einsum(values, keys, "... pos dv, ... pos dk -> ... dv dk")


def linear_attention(
    weights: Float[Tensor, "... d_head d_head"], query: Float[Tensor, "... d_head"]
) -> Float[Tensor, "... d_head"]:
    """Apply a dual-form weight to a query: ``F(q) = W q``."""
    return einsum(weights, query, "... dv dk, ... dk -> ... dv")


def softmax_split(
    scores: Float[Tensor, "... pos"],
    values: Float[Tensor, "... pos d_head"],
    is_demo: torch.Tensor,
) -> tuple[Float[Tensor, "..."], Float[Tensor, "... d_head"], Float[Tensor, "... d_head"]]:
    """Exact split of softmax attention into demonstration and query parts.

    ``softmax(s) V = λ · z_demo + (1 − λ) · z_query`` with ``λ = Σ_{i∈demo} softmax(s)_i``
    (the attention mass on the demonstrations), ``z_demo = softmax(s_demo) V_demo`` and
    ``z_query = softmax(s_query) V_query``. ``is_demo`` is a boolean mask over ``pos``.
    Masked (−inf) scores are allowed; an empty part gets λ = 0 (or 1) and a zero vector.
    Returns ``(λ, z_demo, z_query)``.
    """
    demo = is_demo.to(torch.bool)
    pattern = torch.softmax(scores, dim=-1)
    lam = (pattern * demo).sum(-1)
    z_demo = _renormalised_output(scores, values, demo)
    z_query = _renormalised_output(scores, values, ~demo)
    return lam, z_demo, z_query


def _renormalised_output(scores: Tensor, values: Tensor, keep: Tensor) -> Tensor:
    """``softmax(s restricted to keep) V``; zero where nothing is kept."""
    masked = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(masked, dim=-1).nan_to_num(0.0)
    return einsum(weights, values, "... pos, ... pos d -> ... d")


def linear_layer_dual(
    w0: Float[Tensor, "d_out d_in"],
    errors: Float[Tensor, "n d_out"],
    train_inputs: Float[Tensor, "n d_in"],
    x: Float[Tensor, "... d_in"],
) -> Float[Tensor, "... d_out"]:
    """Linear layer trained by GD, read as linear attention over its training inputs.

    With ``ΔW = Σ_i e_i ⊗ x'_i`` (error signals ⊗ inputs, e.g. ``e_i = −η ∂L/∂y_i``):
    ``(W0 + ΔW) x = W0 x + Σ_i e_i (x'_i · x)`` — the right-hand side, computed here, is
    attention with keys ``x'_i``, values ``e_i`` and query ``x`` (Dai et al. §3.1).
    """
    attention = einsum(train_inputs, x, "n d_in, ... d_in -> ... n")
    return einsum(x, w0, "... d_in, d_out d_in -> ... d_out") + einsum(
        attention, errors, "... n, n d_out -> ... d_out"
    )


def label_margin(
    label_logits: Float[Tensor, "*batch label"], gold: int
) -> Float[Tensor, "*batch"]:
    """The correct-label margin ``m = z_gold − max_{c ≠ gold} z_c`` over the label words' logits.

    Positive exactly when the prediction (argmax over the label words) is correct.
    """
    others = torch.cat([label_logits[..., :gold], label_logits[..., gold + 1 :]], dim=-1)
    return label_logits[..., gold] - others.max(dim=-1).values


def icl_patch_effect(
    grad_z: Float[Tensor, "*batch head d_head"],
    z_query: Float[Tensor, "*batch head d_head"],
    z: Float[Tensor, "*batch head d_head"],
) -> Float[Tensor, "*batch head"]:
    """First-order effect of removing a head's demonstrations: ``Δm ≈ ∇_z m · (z_query − z)``.

    By the softmax split, without the demonstrations a head outputs ``z_query`` instead of ``z``;
    attribution patching takes the first-order Taylor term of the margin ``m`` in that change.
    """
    return einsum(grad_z, z_query - z, "... head d, ... head d -> ... head")


def ft_patch_effect(
    grad_w: Float[Tensor, "kv_head ..."], delta_w: Float[Tensor, "kv_head ..."]
) -> Float[Tensor, " kv_head"]:
    """First-order effect of reverting a KV head's finetuning update: ``Δm ≈ −∇_W m · ΔW_head``.

    ``W_FT − ΔW_head`` is the finetuned model with that head's rows of W_K or W_V (weight or
    bias) set back; the margin changes by ``−Σ ∇_W m ⊙ ΔW`` over the head's entries, to first
    order.
    """
    return -(grad_w * delta_w).flatten(1).sum(-1)


def delta_w_ft(
    w_after: Float[Tensor, "*param"], w_before: Float[Tensor, "*param"]
) -> Float[Tensor, "*param"]:
    """The explicit finetuning update ``ΔW_FT = W_after − W_before`` of one projection's
    weight ``[d_out, d_in]`` or bias ``[d_out]``."""
    return w_after - w_before
