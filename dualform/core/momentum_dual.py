"""The dual form with momentum: meta-gradients plus a fixed momentum update built from values.

Under relaxed linear attention (no softmax, no scale) with momentum, the per-head output at
the last position ``t`` of a prompt (demonstrations ``X'`` then query tokens ``X``) is

    z_t = Σ_{i≤t} v_i (k_i · q_t)  +  Σ_{i<t} η^{t−i} v_i
        = (W_ZSL + ΔW_ICL) q_t  +  m_demo  +  m_query

    m_demo  = Σ_{i ∈ demo}        η^{t−i} v_i      (the demonstrations' "momentum meta-gradient")
    m_query = Σ_{i ∈ query, i<t}  η^{t−i} v_i

Unlike ``ΔW_ICL q`` the momentum pieces do not depend on the query vector ``q_t``: they are a
bias added to the implicitly finetuned linear map. In the GD-with-momentum reading, ΔW_ICL is the
gradient step the demonstrations take and ``m_demo = η^{t−e} Σ_{i∈demo} η^{e−i} v_i`` (``e`` =
last demonstration position) is the velocity they accumulated, decayed by ``η`` for every query
token in between. The zero-shot run (query alone) has the same ``m_query``, so what the
demonstrations add to the output is ``ΔW_ICL q + m_demo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from einops import einsum
from jaxtyping import Bool, Float
from torch import Tensor

from dualform.core.dual_form import DualForm, demo_mask, dual_form, score_hooks, single_prompt
from dualform.core.equations import linear_attention
from dualform.core.momentum import eta_per_head, momentum_attention
from dualform.core.relaxed import relaxed_linear_attention
from dualform.infra.reprs import brief_dtype
from dualform.models.compat import attention_hooks
from dualform.probes import capture, head_counts


def momentum_split(
    values: Float[Tensor, "*lead pos d"],
    eta: float | Float[Tensor, "*lead_or_less"],
    is_demo: Bool[Tensor, " pos"],
    position: int = -1,
) -> tuple[Float[Tensor, "*lead d"], Float[Tensor, "*lead d"]]:
    """``m_t = Σ_{i<t} η^{t−i} v_i = m_demo + m_query`` split by ``is_demo`` at ``t = position``.

    ``m_demo = Σ_{i<t, demo} η^{t−i} v_i`` and ``m_query = Σ_{i<t, not demo} η^{t−i} v_i``.
    ``eta`` broadcasts over the leading dimensions (e.g. ``[head]`` for ``[head, pos, d]``).
    """
    n_pos = values.shape[-2]
    t = position % n_pos
    eta_t = torch.as_tensor(eta, dtype=values.dtype, device=values.device)[..., None]
    lag = (t - torch.arange(n_pos, device=values.device)).to(values.dtype)
    earlier = lag > 0
    weights = torch.where(earlier, eta_t ** lag.clamp(min=0), torch.zeros_like(lag))
    demo = is_demo.to(values.device, torch.bool)
    m_demo = einsum(weights * demo, values, "... pos, ... pos d -> ... d")
    m_query = einsum(weights * ~demo, values, "... pos, ... pos d -> ... d")
    return m_demo, m_query


@dataclass
class MomentumDualForm:
    """A :class:`DualForm` plus the momentum pieces at the same position, per layer and head."""

    dual: DualForm
    eta: Float[Tensor, "layer head"]
    m_demo: Float[Tensor, "layer head d_head"]
    m_query: Float[Tensor, "layer head d_head"]

    def __repr__(self) -> str:
        n_layer, n_head, d_head = self.m_demo.shape
        demo = self.dual.demo_slice
        return (f"MomentumDualForm(layers={n_layer}, heads={n_head}, d_head={d_head}, "
                f"demo={demo.start}:{demo.stop}, mean η={self.eta.float().mean():.3f}, "
                f"dtype={brief_dtype(self.m_demo)})")

    def output(self) -> Float[Tensor, "layer head d_head"]:
        """``(W_ZSL + ΔW_ICL) q + m_demo + m_query`` — equals ``hook_z`` under relaxed attention."""
        return self.dual.linear_attention_output() + self.m_demo + self.m_query

    def icl_update(self) -> Float[Tensor, "layer head d_head"]:
        """``ΔW_ICL q + m_demo`` — everything the demonstrations add."""
        return self.dual.icl_update() + self.m_demo

    def zsl_output(self) -> Float[Tensor, "layer head d_head"]:
        """``W_ZSL q + m_query`` — the query tokens' own contribution."""
        return self.dual.zsl_output() + self.m_query

    def momentum_share(self) -> Float[Tensor, "layer head"]:
        """``‖m_demo‖ / (‖ΔW_ICL q‖ + ‖m_demo‖)``: how much of the demo update is momentum."""
        grad = linear_attention(self.dual.delta_w_icl, self.dual.q).norm(dim=-1)
        mom = self.m_demo.norm(dim=-1)
        return mom / (grad + mom).clamp(min=torch.finfo(mom.dtype).tiny)


def momentum_dual_form(
    model,
    tokens: Tensor | str,
    n_demo_tokens: int,
    eta: float | Tensor | None = None,
    *,
    demo_start: int = 0,
    layers: Sequence[int] | None = None,
    relaxed: bool = True,
) -> MomentumDualForm:
    """Dual form + momentum meta-gradient pieces at the last position of one prompt.

    ``eta`` (float or ``[head]``) adds drop-in momentum through :func:`momentum_attention`;
    ``eta=None`` reads the built-in η of a model that has ``etas()`` (a
    :class:`~dualform.experiments.momentum.model.MomentumLM`). ``relaxed=True`` runs the forward under
    relaxed linear attention, where ``output()`` equals the model's ``hook_z`` exactly; with
    ``relaxed=False`` the pieces describe the real softmax model only approximately.
    """
    tokens = single_prompt(model, tokens)
    n_layers_total = int(model.cfg.n_layers)
    layer_ids = tuple(range(n_layers_total) if layers is None else layers)
    with ExitStack() as stack:
        stack.enter_context(attention_hooks(model))
        if relaxed:
            stack.enter_context(relaxed_linear_attention(model, layers=layer_ids))
        if eta is not None:
            stack.enter_context(momentum_attention(model, eta, layers=layer_ids))
        cap = capture(model, tokens, hooks=(*score_hooks(model), "z"), layers=layer_ids)
    dual = dual_form(model, tokens, n_demo_tokens, demo_start=demo_start, cap=cap)
    etas = _layer_etas(model, eta, layer_ids)
    is_demo = demo_mask(tokens.shape[-1], n_demo_tokens, demo_start)
    pieces = [
        momentum_split(cap.value_vectors(layer)[0].transpose(0, 1), etas[i], is_demo)
        for i, layer in enumerate(layer_ids)
    ]
    m_demo, m_query = (torch.stack(p) for p in zip(*pieces, strict=True))
    return MomentumDualForm(dual, etas, m_demo, m_query)


def _layer_etas(model, eta, layer_ids: Sequence[int]) -> Tensor:
    """η per analysed layer and query head."""
    n_heads, _ = head_counts(model)
    if eta is not None:
        return eta_per_head(eta, n_heads).expand(len(layer_ids), n_heads)
    if not hasattr(model, "etas"):
        raise ValueError("Pass eta, or use a model with built-in momentum (MomentumLM).")
    return model.etas()[list(layer_ids)].to(torch.float64)
