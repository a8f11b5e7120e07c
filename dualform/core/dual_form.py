"""The dual form of attention, extracted from a real model with hooks (Dai et al. 2023, §3).

For one prompt = demonstrations ``X'`` followed by the query's tokens ``X``, at the last position,
per layer and query head (dropping softmax and scale):

    F_ICL(q) = W_V [X'; X] (W_K [X'; X])^T q = (W_ZSL + ΔW_ICL) q
    W_ZSL    = Σ_{query tokens j} v_j ⊗ k_j         ΔW_ICL = Σ_{demo tokens i} v_i ⊗ k_i

Keys and queries are the vectors the model's scores are computed from (after rotary), and each
query head uses the keys/values of its KV head (grouped-query attention). The identity is exact
under :func:`dualform.core.relaxed.relaxed_linear_attention`; :func:`softmax_decomposition` gives the
exact split of the model's real (softmax) output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from dualform.core.equations import linear_attention, meta_gradient, softmax_split
from dualform.infra.reprs import brief_dtype
from dualform.probes import Capture, capture, repeat_kv, score_vector_hooks


@dataclass
class DualForm:
    """ΔW_ICL, W_ZSL and the last query vector for each layer and query head."""

    delta_w_icl: Float[Tensor, "layer head d_head d_head"]
    w_zsl: Float[Tensor, "layer head d_head d_head"]
    q: Float[Tensor, "layer head d_head"]
    z: Float[Tensor, "layer head d_head"] | None
    layers: tuple[int, ...]
    demo_slice: slice

    def linear_attention_output(self) -> Float[Tensor, "layer head d_head"]:
        """``F_ICL(q) = (W_ZSL + ΔW_ICL) q`` — the relaxed-linear-attention output."""
        return linear_attention(self.w_zsl + self.delta_w_icl, self.q)

    def icl_update(self) -> Float[Tensor, "layer head d_head"]:
        """``ΔW_ICL q`` — what the demonstrations add to the zero-shot output."""
        return linear_attention(self.delta_w_icl, self.q)

    def zsl_output(self) -> Float[Tensor, "layer head d_head"]:
        """``W_ZSL q`` — the relaxed output from the query's own tokens."""
        return linear_attention(self.w_zsl, self.q)

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
    if cap is None:
        cap = capture(model, tokens, hooks=(*score_hooks(model), "z"), layers=layers)
    layer_ids = tuple(cap.layers if layers is None else layers)
    return dual_form_from_vectors(
        keys=torch.stack([cap.key_vectors(layer, expand=False)[0] for layer in layer_ids]),
        values=torch.stack([cap.value_vectors(layer, expand=False)[0] for layer in layer_ids]),
        q=torch.stack([cap.query_vectors(layer)[0, -1] for layer in layer_ids]),
        z=torch.stack([cap.get("z", layer)[0, -1] for layer in layer_ids]),
        is_demo=demo_mask(tokens.shape[-1], n_demo_tokens, demo_start),
        layers=layer_ids,
    )


def dual_form_from_vectors(
    keys: Float[Tensor, "layer pos kv_head d_head"],
    values: Float[Tensor, "layer pos kv_head d_head"],
    q: Float[Tensor, "layer head d_head"],
    z: Float[Tensor, "layer head d_head"] | None,
    is_demo: Bool[Tensor, " pos"],
    layers: tuple[int, ...],
) -> DualForm:
    """The dual form of one prompt from its keys and values at every position and its last query.

    The one place ΔW_ICL and W_ZSL are assembled, whether the vectors come from one full forward
    (:func:`dual_form`) or from a cached demonstration prefix plus a query batch row
    (:mod:`dualform.experiments.dai.conditions`). Each query head gets its KV head's matrices.
    """
    k, v = (rearrange(t, "layer pos kv_head d -> layer kv_head pos d") for t in (keys, values))
    delta_w_icl, w_zsl = split_meta_gradient(k, v, is_demo)
    n_heads = q.shape[1]
    demo = torch.nonzero(is_demo).flatten()
    demo_slice = slice(int(demo[0]), int(demo[-1]) + 1) if demo.numel() else slice(0, 0)
    return DualForm(repeat_kv(delta_w_icl, n_heads, dim=1), repeat_kv(w_zsl, n_heads, dim=1),
                    q, z, layers, demo_slice)


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
        tokens = model.to_tokens(tokens)
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.shape[0] != 1:
        raise ValueError(f"dual_form takes one prompt; got a batch of {tokens.shape[0]}.")
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
    """Exact demo/query split of the model's real softmax attention output at ``position``."""
    tokens = single_prompt(model, tokens)
    cap = capture(model, tokens, hooks=("scores", "v", "z"), layers=layers)
    is_demo = demo_mask(tokens.shape[-1], n_demo_tokens, demo_start)
    parts = []
    for layer in cap.layers:
        scores = cap.get("scores", layer)[0, :, position]  # [head, k_pos]
        values = cap.value_vectors(layer)[0].transpose(0, 1)  # [head, pos, d_head]
        parts.append(softmax_split(scores, values, is_demo))
    lam, z_demo, z_query = (torch.stack(p) for p in zip(*parts, strict=True))
    z = cap.stack("z")[:, 0, position]
    return SoftmaxSplit(lam, z_demo, z_query, z, cap.layers)
