"""Gradient descent on the in-context loss, its LSA construction, and GD++.

In-context loss of a linear model ``W ∈ R^{1×d}`` on the N context pairs of one task:
``L(W) = 1/(2N) Σ_j (W x_j − y_j)²``, gradient ``∇L = (1/N) Σ_j (W x_j − y_j) x_j^T``.

**Construction** (von Oswald et al. Prop. 1, official ``create_weights``): with
``W_K = W_Q = [[I_d, 0], [0, 0]]``, ``W_V = [[0, 0], [W0, −1]]``, ``P = (η/N) I`` one LSA layer
adds ``(0, (η/N) Σ_j (W0 x_j − y_j) x_j^T x_i) = (0, −ΔW x_i)`` to every token, with
``ΔW = −η ∇L(W0)``. (The official code uses ``P = diag(0, …, 0, η/N)``; identical, since the value
has no x-part.) Stacking K copies of this layer performs K GD steps *exactly*: by induction the
context y-entries hold ``y_j − (W_k − W0) x_j`` — the residual ``y_j − W_k x_j`` when W0 = 0 —
so the value ``W0 x_j − (y-entry)`` is always ``W_k x_j − y_j``, and the query y-entry, started
at ``−W0 x_test`` (:func:`~dualform.experiments.vonoswald.data.make_tokens`), is ``−W_k x_test``.

**GD++** (paper §4, official ``create_weights(lin_diag=True)`` trained through
``gradient_manipulation``): the LSA additionally gets an x-block, ``W_V = [[I_d, 0], [0, −1]]``,
``P = [[−γ I_d, 0], [0, η/N]]``. In layer l, from the same incoming tokens, (a) one GD step is
taken on the current inputs ``x^{(l)}`` (residual form, W0 = 0) and (b) *every* input — context
and query — is transformed ``x ← (I − γ_l X X^T) x`` with ``X X^T = Σ_j x_j^{(l)} x_j^{(l)T}``.
Equivalently, preconditioned GD ``W ← W − η_l ∇L(W) A_l^T A_l`` with ``A_l`` the product of the
previous transforms. One step of GD++ equals one step of GD. η_l and γ_l are per step.
"""

from __future__ import annotations

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from dualform.experiments.vonoswald.lsa import LSATransformer, build_lsa


def in_context_loss(
    w: Float[Tensor, "batch d"], x: Float[Tensor, "batch n d"], y: Float[Tensor, "batch n"]
) -> Float[Tensor, " batch"]:
    """``L(W) = 1/(2N) Σ_j (W x_j − y_j)²`` per task."""
    return 0.5 * (einsum(x, w, "b n d, b d -> b n") - y).pow(2).mean(-1)


def in_context_gradient(
    w: Float[Tensor, "batch d"], x: Float[Tensor, "batch n d"], y: Float[Tensor, "batch n"]
) -> Float[Tensor, "batch d"]:
    """``∇L(W) = (1/N) Σ_j (W x_j − y_j) x_j^T`` per task."""
    residual = einsum(x, w, "b n d, b d -> b n") - y
    return einsum(residual, x, "b n, b n d -> b d") / x.shape[1]


def gd_step(
    w: Float[Tensor, "batch d"],
    x: Float[Tensor, "batch n d"],
    y: Float[Tensor, "batch n"],
    eta: float,
) -> Float[Tensor, "batch d"]:
    """One GD step ``W ← W − η ∇L(W)``."""
    return w - eta * in_context_gradient(w, x, y)


def gd_predict(
    x: Float[Tensor, "batch n d"],
    y: Float[Tensor, "batch n"],
    x_test: Float[Tensor, "batch d"],
    eta: float,
    steps: int,
    w0: Tensor | None = None,
) -> tuple[Float[Tensor, " batch"], Float[Tensor, "batch d"]]:
    """``ŷ = W_K x_test`` after K = ``steps`` GD steps from W0 (default 0); returns (ŷ, W_K)."""
    w = torch.zeros_like(x_test) if w0 is None else w0.to(x_test).expand_as(x_test).clone()
    for _ in range(steps):
        w = gd_step(w, x, y, eta)
    return einsum(w, x_test, "b d, b d -> b"), w


def curvature_correction(
    x: Float[Tensor, "batch m d"], x_context: Float[Tensor, "batch n d"], gamma: float | Tensor
) -> Float[Tensor, "batch m d"]:
    """GD++ input transform ``x ← (I − γ X X^T) x`` with ``X X^T = Σ_j x_j x_j^T`` (context)."""
    gram = einsum(x_context, x_context, "b n i, b n j -> b i j")
    return x - gamma * einsum(gram, x, "b i j, b m j -> b m i")


def gdpp_predict(
    x: Float[Tensor, "batch n d"],
    y: Float[Tensor, "batch n"],
    x_test: Float[Tensor, "batch d"],
    etas: Tensor | list[float],
    gammas: Tensor | list[float],
) -> Float[Tensor, " batch"]:
    """GD++ from W0 = 0: per step, a GD step on the current inputs, then the curvature correction.

    Written in the residual form that the LSA tokens carry: ``r_j = y_j − Σ_l ΔW_l x_j^{(l)}``,
    ``ŷ = Σ_l ΔW_l x_test^{(l)}`` with ``ΔW_l = (η_l/N) Σ_j r_j x_j^{(l)T}``.
    """
    residual, pred = y, torch.zeros_like(x_test[:, 0])
    for eta, gamma in zip(etas, gammas, strict=True):
        delta_w = eta * einsum(residual, x, "b n, b n d -> b d") / x.shape[1]
        residual = residual - einsum(delta_w, x, "b d, b n d -> b n")
        pred = pred + einsum(delta_w, x_test, "b d, b d -> b")
        both = curvature_correction(torch.cat([x, x_test[:, None]], dim=1), x, gamma)
        x, x_test = both[:, :-1], both[:, -1]
    return pred


def gd_construction(
    d: int, eta: float, n: int, w0: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """LSA weights for one GD step: ``W_K = W_Q = [[I,0],[0,0]]``, ``W_V = [[0,0],[W0,−1]]``, ``P = (η/N) I``."""
    w_kq = torch.zeros(d + 1, d + 1, dtype=dtype)
    w_kq[:d, :d] = torch.eye(d, dtype=dtype)
    w_v = torch.zeros(d + 1, d + 1, dtype=dtype)
    if w0 is not None:
        w_v[d, :d] = w0.to(dtype).reshape(d)
    w_v[d, d] = -1.0
    p = torch.eye(d + 1, dtype=dtype) * (eta / n)
    return {"W_K": w_kq, "W_Q": w_kq.clone(), "W_V": w_v, "P": p}


def gdpp_construction(
    d: int, eta: float, gamma: float, n: int, dtype: torch.dtype = torch.float64
) -> dict[str, Tensor]:
    """GD++ layer: as :func:`gd_construction` (W0 = 0) plus ``W_V[:d,:d] = I``, ``P[:d,:d] = −γ I``."""
    weights = gd_construction(d, eta, n, dtype=dtype)
    weights["W_V"][:d, :d] = torch.eye(d, dtype=dtype)
    weights["P"][:d, :d] = -gamma * torch.eye(d, dtype=dtype)
    return weights


def constructed_lsa(
    d: int,
    n: int,
    etas: list[float],
    *,
    gammas: list[float] | None = None,
    w0: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> LSATransformer:
    """LSA Transformer with one constructed layer per entry of ``etas`` (GD, or GD++ if ``gammas``)."""
    model = build_lsa(d, len(etas)).to(dtype)
    for layer, eta in enumerate(etas):
        if gammas is None:
            weights = gd_construction(d, eta, n, w0=w0, dtype=dtype)
        else:
            weights = gdpp_construction(d, eta, gammas[layer], n, dtype=dtype)
        model.set_paper_weights(layer, weights["W_K"], weights["W_Q"], weights["W_V"], weights["P"])
    return model

