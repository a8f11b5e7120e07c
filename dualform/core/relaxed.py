"""Relaxed linear attention: the intervention under which the dual form is exact.

Dai et al. drop the softmax and the ``1/√d`` scale: ``F(q) = W_V X (W_K X)^T q``. Inside a real
model that is one hook on ``hook_pattern``: replace the post-softmax pattern by the raw,
causally masked, *unscaled* scores ``q · k`` (plus the positional bias ``b_i`` of ALiBi models,
which the model adds to its scores). Everything else (rotary, GQA, W_O, MLPs) is the model's own
code, so the model's ``hook_z`` then equals ``(W_ZSL + ΔW_ICL) q (+ Σ_i b_i v_i)`` exactly.

Soft-capped models (Gemma-2: ``s = cap · tanh(scale · q · k / cap)``): the relaxed pattern is
the *uncapped* ``q · k``, read from the rotated queries and keys (the capped score is not
linear in ``q``); the softmax split (:func:`dualform.core.dual_form.softmax_decomposition`)
uses the real capped scores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor

from dualform.models.compat import attention_hooks
from dualform.models.features import require_supported
from dualform.probes import attention_scale, hook_name, hooks, n_layers


def relaxed_pattern(
    scores: Float[Tensor, "batch head q_pos k_pos"], scale: float
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """Unscaled, masked scores ``q · k`` as an attention pattern: ``A_lin = S / scale``, 0 where masked.

    ``scores`` are the model's pre-softmax scores ``scale · q · k`` with masked entries at
    (or near) the dtype's minimum or ``-inf``.
    """
    masked = ~torch.isfinite(scores) | (scores <= torch.finfo(scores.dtype).min / 2)
    return torch.where(masked, torch.zeros_like(scores), scores / scale)


@contextmanager
def relaxed_linear_attention(
    model,
    *,
    layers: Sequence[int] | None = None,
    key_mask: Bool[Tensor, " k_pos"] | None = None,
) -> Iterator[None]:
    """Within the block, attention of ``layers`` (default all) is relaxed linear attention.

    ``key_mask`` (bool over key positions) keeps only those columns of the pattern: e.g. the
    demonstration positions, to isolate ``ΔW_ICL q``. All hooks are removed on exit.
    """
    layer_ids = range(n_layers(model)) if layers is None else layers
    softcap = getattr(model.cfg, "attn_scores_soft_cap", None) or 0.0
    saved: dict[tuple[str, int], Tensor] = {}

    def save(activation: Tensor, hook, *, key: tuple[str, int]) -> None:
        saved[key] = activation

    def replace_pattern(activation: Tensor, hook, *, layer: int) -> Tensor:
        if ("attn_scores", layer) not in saved:
            raise RuntimeError(
                f"hook_attn_scores of layer {layer} did not fire before hook_pattern; this model "
                "family does not expose pre-softmax scores, so attention cannot be relaxed."
            )
        scores = saved.pop(("attn_scores", layer))
        require_supported(model, "relaxed_linear_attention", n_pos=scores.shape[-1])
        if softcap > 0:
            pattern = uncapped_pattern(scores, saved.pop(("q", layer)), saved.pop(("k", layer)))
        else:
            pattern = relaxed_pattern(scores, attention_scale(model, layer))
        if key_mask is not None:
            pattern = pattern * key_mask.to(pattern.device, pattern.dtype)
        return pattern.to(activation.dtype)

    rotated = hook_name("rot_q", 0) in model.hook_dict
    pairs = []
    for layer in layer_ids:
        watched = [("attn_scores", "attn_scores")]
        if softcap > 0:
            watched += [("q", "rot_q" if rotated else "q"), ("k", "rot_k" if rotated else "k")]
        for key, short in watched:
            pairs.append((hook_name(short, layer), partial(save, key=(key, layer))))
        pairs.append((hook_name("pattern", layer), partial(replace_pattern, layer=layer)))
    with attention_hooks(model), hooks(model, pairs):
        yield


def uncapped_pattern(
    scores: Float[Tensor, "batch head q_pos k_pos"],
    q: Float[Tensor, "batch q_pos head d_head"],
    k: Float[Tensor, "batch k_pos kv_head d_head"],
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """``A_lin = q · k`` (uncapped, unscaled), 0 where the model's ``scores`` are masked."""
    if k.shape[1] != scores.shape[-1]:
        raise RuntimeError(
            "Relaxed attention of a soft-capped model needs every key in one forward; a KV cache "
            f"holds {scores.shape[-1] - k.shape[1]} keys this forward did not compute.")
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    raw = einsum(q, k, "batch q_pos head d, batch k_pos head d -> batch head q_pos k_pos")
    masked = ~torch.isfinite(scores) | (scores <= torch.finfo(scores.dtype).min / 2)
    return torch.where(masked, torch.zeros_like(raw), raw)
