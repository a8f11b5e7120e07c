"""Functional pieces of :class:`~dualform.experiments.momentum.model.MomentumLM` attention, one equation each."""

from __future__ import annotations

import math

import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor
from torch.nn import functional as F


def rotary_tables(
    n_pos: int, d_head: int, base: float, device=None
) -> tuple[Float[Tensor, "pos d_head"], Float[Tensor, "pos d_head"]]:
    """``cos(p·θ_j)``, ``sin(p·θ_j)`` with ``θ_j = base^(−2j/d_head)`` (halves repeated, as HF)."""
    inv_freq = base ** (-torch.arange(0, d_head, 2, device=device, dtype=torch.float64) / d_head)
    angles = torch.outer(torch.arange(n_pos, device=device, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"], cos: Tensor, sin: Tensor
) -> Float[Tensor, "batch pos head d_head"]:
    """``x·cos + rotate_half(x)·sin`` with ``rotate_half([a, b]) = [−b, a]`` (Llama RoPE)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos.to(x.dtype)[None, :, None, :], sin.to(x.dtype)[None, :, None, :]
    return x * cos + rotated * sin


def causal_scores(
    q: Float[Tensor, "batch q_pos head d_head"],
    k: Float[Tensor, "batch k_pos head d_head"],
    key_mask: Tensor | None,
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """``S_ti = q_t·k_i / √d_head`` for ``i ≤ t`` (and i not padding), −inf elsewhere."""
    scores = einsum(q, k, "b qp h d, b kp h d -> b h qp kp") / math.sqrt(q.shape[-1])
    n = q.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    return scores.masked_fill(~allowed, float("-inf"))


def softmax_pattern(
    scores: Float[Tensor, "*lead k_pos"], padded: bool = False
) -> Float[Tensor, "*lead k_pos"]:
    """``A = softmax(S)`` along keys; with ``padded``, fully masked rows become 0, not NaN."""
    pattern = torch.softmax(scores, dim=-1)
    return pattern.nan_to_num(0.0) if padded else pattern


def fused_attention(
    q: Float[Tensor, "batch pos head d_head"],
    k: Float[Tensor, "batch pos head d_head"],
    v: Float[Tensor, "batch pos head d_head"],
    key_mask: Tensor | None,
) -> Float[Tensor, "batch pos head d_head"]:
    """``z_t = Σ_{i≤t} softmax_i(q_t·k_i/√d_head) v_i`` without materialising the pattern."""
    to_heads = "b p h d -> b h p d"
    q, k, v = (rearrange(x, to_heads) for x in (q, k, v))
    if key_mask is None:
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        n = q.shape[2]
        allowed = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        allowed = allowed & key_mask[:, None, None, :]
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).nan_to_num(0.0)
    return rearrange(z, "b h p d -> b p h d")
