"""Relaxed linear attention: the intervention under which the dual form is exact.

Dai et al. drop the softmax and the ``1/√d`` scale: ``F(q) = W_V X (W_K X)^T q``. Inside a real
model that is one hook on ``hook_pattern``: replace the post-softmax pattern by the raw,
causally masked, *unscaled* scores ``q · k``. Everything else (rotary, GQA, W_O, MLPs) is the
model's own code, so the model's ``hook_z`` then equals ``(W_ZSL + ΔW_ICL) q`` exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from jaxtyping import Bool, Float
from torch import Tensor

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
    scores: dict[int, Tensor] = {}

    def save_scores(activation: Tensor, hook, *, layer: int) -> None:
        scores[layer] = activation

    def replace_pattern(activation: Tensor, hook, *, layer: int) -> Tensor:
        if layer not in scores:
            raise RuntimeError(
                f"hook_attn_scores of layer {layer} did not fire before hook_pattern; this model "
                "family does not expose pre-softmax scores, so attention cannot be relaxed."
            )
        pattern = relaxed_pattern(scores.pop(layer), attention_scale(model, layer))
        if key_mask is not None:
            pattern = pattern * key_mask.to(pattern.device, pattern.dtype)
        return pattern.to(activation.dtype)

    pairs = []
    for layer in layer_ids:
        pairs.append((hook_name("scores", layer), partial(save_scores, layer=layer)))
        pairs.append((hook_name("pattern", layer), partial(replace_pattern, layer=layer)))
    with hooks(model, pairs):
        yield
