"""Momentum attention (Dai et al. 2023, §5) as equations and as a drop-in hook intervention.

By analogy with gradient descent with momentum, every attention output gets an exponential
moving average of the *earlier* value vectors added to it:

    MoAttn(V, K, q_t) = Attn(V, K, q_t) + Σ_{i<t} η^{t−i} v_i

Equivalently the post-softmax pattern gets the decay matrix ``M[t, i] = η^{t−i}`` (i < t, else 0)
added to it. :func:`momentum_attention` implements the first form: it records ``hook_v`` of a
layer and adds :func:`momentum_term` of those values to ``hook_z`` (the per-head attention output
before ``W_O``). We chose the value/z form over the pattern form because

* ``hook_pattern`` keeps meaning "the softmax pattern" (it still sums to 1), so attention-pattern
  analyses and :func:`dualform.core.relaxed.relaxed_linear_attention` compose with momentum unchanged;
* the EMA is a log-depth scan with ``O(pos · d_head · log pos)`` work per head, instead of a
  ``pos × pos`` matrix product; :func:`decay_matrix` gives the pattern form for checks.

Grouped-query attention: query head ``h`` uses the values of KV head ``h // (n_heads / n_kv)``
(Hugging Face ``repeat_kv`` order). Padding: pass the same ``attention_mask`` ``[batch, pos]``
that the forward gets; values at masked (padding) positions are zeroed before the EMA, so padding
never leaks into the momentum of real tokens (left or right padding). KV cache: the EMA only sees
the values of the tokens in the current forward call, so with ``past_key_values`` it restarts at
the first new token — run full forwards under momentum.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from dualform.probes import head_counts, hook_name, hooks, n_layers, repeat_kv

Eta = float | Float[Tensor, " head"]


def decay_matrix(
    n_pos: int, eta: float | Float[Tensor, "*lead"]
) -> Float[Tensor, "*lead q_pos k_pos"]:
    """The momentum pattern ``M[t, i] = η^{t−i}`` for ``i < t`` and 0 for ``i ≥ t``.

    ``(M V)_t = Σ_{i<t} η^{t−i} v_i``; adding ``M`` to the softmax pattern is momentum attention.
    A tensor ``eta`` gives one matrix per entry (e.g. ``[head]`` → ``[head, q_pos, k_pos]``).
    """
    eta_t = eta if isinstance(eta, Tensor) else torch.tensor(float(eta), dtype=torch.float64)
    pos = torch.arange(n_pos, device=eta_t.device)
    lag = (pos[:, None] - pos[None, :]).to(eta_t.dtype)  # t − i
    strictly_lower = lag > 0
    powers = eta_t[..., None, None] ** lag.clamp(min=0)
    return torch.where(strictly_lower, powers, torch.zeros_like(powers))


def momentum_term(
    values: Float[Tensor, "*lead pos d"], eta: float | Float[Tensor, "*lead_or_less"]
) -> Float[Tensor, "*lead pos d"]:
    """Exponential moving average of earlier values: ``m_t = Σ_{i<t} η^{t−i} v_i``.

    ``m`` obeys ``m_t = η (m_{t−1} + v_{t−1})``, ``m_0 = 0``. It is computed with a log-depth
    (Hillis–Steele) scan: start from ``s_t = η v_{t−1}``; for ``k = 0, 1, …`` while ``2^k < pos``,
    ``s_t ← s_t + η^{2^k} s_{t−2^k}``. Only non-negative powers of η appear (stable for any
    length), the work is ``O(pos · d · log pos)`` and there is no Python loop over positions.
    ``eta`` is a float or a tensor broadcastable to the leading dimensions of ``values``
    (e.g. ``[head]`` with values ``[batch, head, pos, d]``); gradients flow to a tensor η.
    """
    eta_t = torch.as_tensor(eta, dtype=values.dtype, device=values.device)[..., None, None]
    n_pos = values.shape[-2]
    state = eta_t * _shift(values, 1)
    decay, step = eta_t, 1
    while step < n_pos:
        state = state + decay * _shift(state, step)
        decay, step = decay * decay, step * 2
    return state


def _shift(x: Float[Tensor, "*lead pos d"], step: int) -> Float[Tensor, "*lead pos d"]:
    """``y_t = x_{t−step}`` for ``t ≥ step``, else 0 (shift along the position axis)."""
    if step >= x.shape[-2]:
        return torch.zeros_like(x)
    pad = torch.zeros_like(x[..., :step, :])
    return torch.cat([pad, x[..., :-step, :]], dim=-2)


def head_momentum(
    values: Float[Tensor, "batch pos kv_head d_head"],
    eta: Float[Tensor, " head"],
    key_mask: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos head d_head"]:
    """Per query head ``m_t = Σ_{i<t, i not padding} η_h^{t−i} v_i`` with GQA-shared values.

    Query head ``h`` uses KV head ``h // (head / kv_head)``. If all η are equal the scan runs on
    the KV heads and is then repeated (cheaper, used only when η needs no gradient); otherwise
    the values are repeated first.
    """
    if key_mask is not None:  # where, not multiply: padded values may be NaN
        values = torch.where(key_mask[:, :, None, None], values, torch.zeros_like(values))
    n_heads = eta.shape[0]
    per_kv = rearrange(values, "batch pos kv d -> batch kv pos d")
    if not eta.requires_grad and bool((eta == eta[0]).all()):
        m = repeat_kv(momentum_term(per_kv, eta[0]), n_heads, dim=1)
    else:
        m = momentum_term(repeat_kv(per_kv, n_heads, dim=1), eta)
    return rearrange(m, "batch head pos d -> batch pos head d")


def eta_per_head(eta: Eta, n_heads: int, heads: Sequence[int] | None = None) -> Tensor:
    """η as a ``[head]`` float64 tensor; heads outside ``heads`` (if given) get η = 0."""
    vec = torch.as_tensor(eta, dtype=torch.float64).flatten()
    if vec.numel() == 1:
        vec = vec.expand(n_heads).clone()
    if vec.numel() != n_heads:
        raise ValueError(f"eta has {vec.numel()} entries; the model has {n_heads} heads.")
    if not bool(((vec >= 0) & (vec < 1)).all()):
        raise ValueError(f"eta must lie in [0, 1) (a decaying average); got {vec.tolist()}.")
    if heads is not None:
        keep = torch.zeros(n_heads, dtype=torch.bool)
        keep[list(heads)] = True
        vec = torch.where(keep, vec, torch.zeros_like(vec))
    return vec


@contextmanager
def momentum_attention(
    model,
    eta: Eta,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    attention_mask: Tensor | None = None,
) -> Iterator[Float[Tensor, " head"]]:
    """Within the block, attention of ``layers`` (default all) is momentum attention.

    ``z_t ← z_t + Σ_{i<t} η^{t−i} v_i`` per query head, through hooks on ``hook_v`` and
    ``hook_z`` of any TransformerBridge or TransformerLens-style model. ``eta`` is a float or a
    per-head ``[head]`` tensor in ``[0, 1)``; ``heads`` restricts momentum to those query heads
    (η = 0 elsewhere). ``attention_mask`` (``[batch, pos]``, 1 = real token) must be the mask
    given to the forward when the batch is padded. Yields the per-head η used. Every hook is
    removed on exit, also when the block raises.
    """
    n_heads, _ = head_counts(model)
    eta_vec = eta_per_head(eta, n_heads, heads)
    layer_ids = list(range(n_layers(model))) if layers is None else [int(x) for x in layers]
    key_mask = None if attention_mask is None else attention_mask.to(torch.bool)
    stored: dict[int, Tensor] = {}

    def save_values(activation: Tensor, hook, *, layer: int) -> None:
        stored[layer] = activation

    def add_momentum(activation: Tensor, hook, *, layer: int) -> Tensor:
        values = stored.pop(layer)
        eta_dev = eta_vec.to(values.device, values.dtype)
        mask = None if key_mask is None else key_mask.to(values.device)
        return activation + head_momentum(values, eta_dev, mask).to(activation.dtype)

    pairs = []
    for layer in layer_ids:
        pairs.append((hook_name("v", layer), _bind(save_values, layer)))
        pairs.append((hook_name("z", layer), _bind(add_momentum, layer)))
    try:
        with hooks(model, pairs):
            yield eta_vec
    finally:
        stored.clear()


def _bind(fn, layer: int):
    return lambda activation, hook: fn(activation, hook, layer=layer)


def eta_from_logit(logit: Tensor) -> Tensor:
    """``η = sigmoid(logit)`` — keeps a learnable η inside (0, 1)."""
    return torch.sigmoid(logit)


def logit_from_eta(eta: float) -> float:
    """Inverse of :func:`eta_from_logit`: ``logit = log(η / (1 − η))``."""
    return math.log(eta / (1.0 - eta))
