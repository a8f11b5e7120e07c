"""Bridge between von Oswald et al. (LSA ≡ GD) and Dai et al. (attention's dual form).

For a linear self-attention head, the query token's update is *exactly* Dai's relaxed linear
attention with the meta-gradient built from the context tokens:

    Δe_query = Σ_h P_h ΔW_ICL^h q^h,    ΔW_ICL^h = Σ_{j ≤ N} v_j^h ⊗ k_j^h   (meta_gradient)

(no softmax, so there is no approximation; only the N context tokens are keys, so there is no
``W_ZSL`` term). Stacking the whole layer into one matrix per task, ``M = Σ_h P_h ΔW_ICL^h W_Q^h``
(paper layout), the query update is ``M e_query``. For the GD construction
``M[y, x] = (η/N) Σ_j (W_k x_j − y_j) x_j^T = η ∇L(W_k)``, so the model implied by layer k is
``W_k − M[y, x] = W_k − η ∇L(W_k)`` — the meta-gradient *is* the GD update.
"""

from __future__ import annotations

import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor

from dualform.core.dual_form import demo_mask, split_meta_gradient
from dualform.core.equations import linear_attention
from dualform.experiments.vonoswald.data import RegressionBatch
from dualform.experiments.vonoswald.gd import gd_predict, in_context_gradient
from dualform.experiments.vonoswald.lsa import LSATransformer
from dualform.experiments.vonoswald.metrics import implied_linear_model

HOOKS = (
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "hook_resid_pre",
    "hook_resid_post",
)


def layer_meta_gradient(
    k: Float[Tensor, "batch pos head d_head"], v: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "batch head d_head d_head"]:
    """``ΔW_ICL^h = Σ_{j ≤ N} v_j^h ⊗ k_j^h`` over the context positions (all but the query):
    the context pairs are the demonstrations of :func:`~dualform.core.dual_form.split_meta_gradient`."""
    keys, values = (rearrange(t, "b p h d -> b h p d") for t in (k, v))
    is_context = demo_mask(k.shape[1], k.shape[1] - 1)
    return split_meta_gradient(keys, values, is_context)[0]


def dual_query_update(
    delta_w: Float[Tensor, "batch head d_head d_head"],
    q_query: Float[Tensor, "batch head d_head"],
    w_o: Float[Tensor, "head d_head d_model"],
) -> tuple[Float[Tensor, "batch head d_head"], Float[Tensor, "batch d_model"]]:
    """``z^h = ΔW_ICL^h q^h`` (Dai's linear attention) and ``Δe = Σ_h P_h z^h``."""
    z = linear_attention(delta_w, q_query)
    return z, einsum(z, w_o, "b h dh, h dh dm -> b dm")


def layer_matrix(
    delta_w: Float[Tensor, "batch head d_head d_head"],
    w_q: Float[Tensor, "head d_model d_head"],
    w_o: Float[Tensor, "head d_head d_model"],
) -> Float[Tensor, "batch d_model d_model"]:
    """``M = Σ_h P_h ΔW_ICL^h W_Q^h`` (paper layout): the query token's update is ``M e_query``."""
    return einsum(w_o, delta_w, w_q, "h dv dout, b h dv dk, h din dk -> b dout din")


def dual_form_bridge(
    model: LSATransformer,
    batch: RegressionBatch,
    *,
    eta: float | None = None,
    w0: Tensor | None = None,
) -> dict:
    """Check, layer by layer, that the dual form reproduces the LSA's query update.

    Returns max-abs errors per layer (``z_error``: ΔW_ICL q vs ``hook_z``; ``update_error``:
    Σ_h P_h ΔW_ICL q vs ``resid_post − resid_pre`` at the query), the layer matrices ``M`` and
    ``delta_w`` of layer 0, the implied model of layer 0 (``W0 − M[y,x] + M[y,y] W0``) and,
    for a one-layer model, its error against the autograd Jacobian ∂ŷ/∂x_test. With ``eta``
    (a GD construction), ``gd_step_error[k] = max |W_k − M_k[y, x] − (W_k − η ∇L(W_k))|``.
    """
    tokens = batch.tokens(w0)
    names = [f"blocks.{i}.{h}" for i in range(model.cfg.n_layers) for h in HOOKS]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    out: dict = {"z_error": [], "update_error": [], "gd_step_error": []}
    for layer, block in enumerate(model.blocks):
        get = lambda hook, i=layer: cache[f"blocks.{i}.{hook}"]  # noqa: E731
        delta_w = layer_meta_gradient(get("attn.hook_k"), get("attn.hook_v"))
        z, update = dual_query_update(delta_w, get("attn.hook_q")[:, -1], block.attn.W_O)
        layer_update = get("hook_resid_post")[:, -1] - get("hook_resid_pre")[:, -1]
        out["z_error"].append((z - get("attn.hook_z")[:, -1]).abs().max().item())
        out["update_error"].append((update - layer_update).abs().max().item())
        matrix = layer_matrix(delta_w, block.attn.W_Q, block.attn.W_O).detach()
        if layer == 0:
            out["delta_w"], out["matrix"] = delta_w.detach(), matrix
            out["implied_model"] = _implied_model_layer0(matrix, batch, w0)
        if eta is not None:
            out["gd_step_error"].append(_gd_step_error(matrix, batch, eta, layer, w0))
    if model.cfg.n_layers == 1:
        jac = implied_linear_model(model.predict, tokens, w0)
        out["jacobian_error"] = (jac - out["implied_model"]).abs().max().item()
    return out


def _implied_model_layer0(matrix: Tensor, batch: RegressionBatch, w0: Tensor | None) -> Tensor:
    """Model implied by layer 0: ``ŷ = W0 x − (M e)_y`` with ``e = (x, −W0 x)``."""
    d = batch.d
    w0_b = (
        torch.zeros_like(batch.x_test)
        if w0 is None
        else w0.to(batch.x_test).expand_as(batch.x_test)
    )
    return w0_b - matrix[:, d, :d] + matrix[:, d, d, None] * w0_b


def _gd_step_error(matrix: Tensor, batch: RegressionBatch, eta: float, layer: int, w0) -> float:
    """``max |W_k − M[y, x] − (W_k − η∇L(W_k))|`` with W_k after ``layer`` GD steps."""
    d = batch.d
    _, w_k = gd_predict(batch.x, batch.y, batch.x_test, eta, layer, w0)
    gd_next = w_k - eta * in_context_gradient(w_k, batch.x, batch.y)
    return (w_k - matrix[:, d, :d] - gd_next).abs().max().item()


def bridge_summary(result: dict) -> dict[str, float | list[float]]:
    """JSON-friendly subset of :func:`dual_form_bridge`'s output."""
    keys = ("z_error", "update_error", "gd_step_error", "jacobian_error")
    return {k: result[k] for k in keys if k in result and result[k] != []}
