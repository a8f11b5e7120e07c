"""Linear self-attention (LSA) Transformer of von Oswald et al. (2023) as a TransformerLens module.

One layer updates every token (context and query) with

    e_i ← e_i + Σ_h P_h Σ_{j ≤ N} (W_V^h e_j) (W_K^h e_j)^T (W_Q^h e_i)

where the sum runs over the N context tokens only — the query token (last position) is never a
key or value. This is the official code's default (``include_query=False``: keys and values are
``h[:, :-1]``, queries are all of ``h``, all tokens are updated) and the paper's Eq. (7)-(8).
No softmax, no 1/√d scaling, no layer norm, no MLP, no biases (``att_only_trans=True``).

Weights use TransformerLens' layout (``W_Q[h]: [d_model, d_head]`` so that ``q = e @ W_Q[h]``,
``W_O[h]: [d_head, d_model]``); the paper's matrices act on column vectors, so
``W_Q^paper = W_Q[h]^T`` and ``P = W_O[h]^T`` (see :meth:`LSATransformer.set_paper_weights`).
Hook names follow TransformerLens: ``blocks.{l}.attn.hook_q/hook_k/hook_v`` ``[batch, pos, head,
d_head]`` (k, v at every position, only context positions are attended),
``blocks.{l}.attn.hook_attn_scores`` / ``hook_pattern`` ``[batch, head, q_pos, k_pos]`` (query
key column zeroed, resp. −inf before softmax), ``blocks.{l}.attn.hook_z``,
``blocks.{l}.hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid`` / ``hook_mlp_out`` (MLP
variant only), ``hook_resid_post``.

Optional variant (``attn="softmax"``, ``mlp=True``): softmax attention over the context keys with
1/√d_head scaling, followed by a GELU MLP — the official ``use_softmax`` / ``att_only_trans=False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from dualform.experiments.vonoswald.data import read_prediction


@dataclass
class LSAConfig:
    """Shape and variant of an LSA Transformer (defaults: the paper's single-head LSA)."""

    d_model: int
    n_layers: int = 1
    n_heads: int = 1
    d_head: int | None = None  # default: d_model (official key_size = d + 1)
    attn: Literal["linear", "softmax"] = "linear"
    mlp: bool = False
    d_mlp: int | None = None  # default: 4 · d_model (official widening_factor = 4)
    init_scale: float = 0.002  # official VarianceScaling(0.002 / n_layers), fan-in
    clip: float = 0.0  # > 0: clamp the residual stream to ±clip after each sublayer (official)

    def __post_init__(self) -> None:
        self.d_head = self.d_head or self.d_model
        self.d_mlp = self.d_mlp or 4 * self.d_model


def context_key_mask(n_pos: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``[k_pos]`` mask, True for the N context keys ``j < N`` (all but the last token)."""
    mask = torch.ones(n_pos, dtype=torch.bool, device=device)
    mask[-1] = False
    return mask


def linear_attention_scores(
    q: Float[Tensor, "batch q_pos head d_head"],
    k: Float[Tensor, "batch k_pos head d_head"],
    key_mask: Tensor,
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """``A_ij = (W_K e_j)^T (W_Q e_i)`` for context keys j, 0 for the query key (no softmax)."""
    scores = einsum(q, k, "b qp h dh, b kp h dh -> b h qp kp")
    return scores * key_mask


def softmax_attention_scores(
    q: Float[Tensor, "batch q_pos head d_head"],
    k: Float[Tensor, "batch k_pos head d_head"],
    key_mask: Tensor,
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """``s_ij = q_i·k_j / √d_head`` for context keys j, −inf for the query key (pre-softmax)."""
    scores = einsum(q, k, "b qp h dh, b kp h dh -> b h qp kp") / math.sqrt(q.shape[-1])
    return scores.masked_fill(~key_mask, float("-inf"))


def attention_mix(
    pattern: Float[Tensor, "batch head q_pos k_pos"], v: Float[Tensor, "batch k_pos head d_head"]
) -> Float[Tensor, "batch q_pos head d_head"]:
    """``z_i = Σ_j A_ij v_j`` — per head; for LSA ``z_i = (Σ_j v_j ⊗ k_j) q_i``."""
    return einsum(pattern, v, "b h qp kp, b kp h dh -> b qp h dh")


def output_projection(
    z: Float[Tensor, "batch pos head d_head"], w_o: Float[Tensor, "head d_head d_model"]
) -> Float[Tensor, "batch pos d_model"]:
    """``Δe_i = Σ_h P_h z_i^h`` with ``P_h = W_O[h]^T``."""
    return einsum(z, w_o, "b p h dh, h dh dm -> b p dm")


class LinearSelfAttention(nn.Module):
    """One (multi-head) linear or softmax self-attention sublayer with TransformerLens hooks."""

    def __init__(self, cfg: LSAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, dm, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        std_in = math.sqrt(cfg.init_scale / cfg.n_layers / dm)
        std_out = math.sqrt(cfg.init_scale / cfg.n_layers / (h * dh))
        self.W_Q = nn.Parameter(torch.randn(h, dm, dh) * std_in)
        self.W_K = nn.Parameter(torch.randn(h, dm, dh) * std_in)
        self.W_V = nn.Parameter(torch.randn(h, dm, dh) * std_in)
        self.W_O = nn.Parameter(torch.randn(h, dh, dm) * std_out)
        for name in ("q", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        """Attention output ``Σ_h P_h Σ_{j≤N} A_ij v_j`` for every position i."""
        proj = "b p dm, h dm dh -> b p h dh"
        q = self.hook_q(einsum(resid, self.W_Q, proj))
        k = self.hook_k(einsum(resid, self.W_K, proj))
        v = self.hook_v(einsum(resid, self.W_V, proj))
        key_mask = context_key_mask(resid.shape[1], resid.device)
        if self.cfg.attn == "linear":
            scores = self.hook_attn_scores(linear_attention_scores(q, k, key_mask))
            pattern = self.hook_pattern(scores)
        else:
            scores = self.hook_attn_scores(softmax_attention_scores(q, k, key_mask))
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(attention_mix(pattern, v))
        return output_projection(z, self.W_O)


class MLP(nn.Module):
    """GELU MLP without biases (official ``MLP``, ``use_bias_p=False``)."""

    def __init__(self, cfg: LSAConfig) -> None:
        super().__init__()
        std = math.sqrt(cfg.init_scale / cfg.n_layers / cfg.d_model)
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, cfg.d_mlp) * std)
        self.W_out = nn.Parameter(torch.randn(cfg.d_mlp, cfg.d_model) * std)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """``MLP(x) = GELU(x W_in) W_out``."""
        post = self.hook_post(nn.functional.gelu(self.hook_pre(x @ self.W_in)))
        return post @ self.W_out


class LSABlock(nn.Module):
    """Residual block ``e ← e + Attn(e)`` (then ``e ← e + MLP(e)`` in the MLP variant)."""

    def __init__(self, cfg: LSAConfig) -> None:
        super().__init__()
        self.attn = LinearSelfAttention(cfg)
        self.mlp = MLP(cfg) if cfg.mlp else None
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()
        if cfg.mlp:
            self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        resid = self._clip(resid + self.hook_attn_out(self.attn(resid)))
        if self.mlp is not None:
            resid = self.hook_resid_mid(resid)
            resid = self._clip(resid + self.hook_mlp_out(self.mlp(resid)))
        return self.hook_resid_post(resid)

    def _clip(self, resid: Tensor) -> Tensor:
        """Official ``config.clip``: clamp activations to ±clip (off when clip = 0)."""
        clip = self.attn.cfg.clip
        return resid.clamp(-clip, clip) if clip > 0 else resid


class LSATransformer(HookedRootModule):
    """Stack of LSA blocks on tokens ``[batch, N+1, d+1]``; prediction = −(query y-entry)."""

    def __init__(self, cfg: LSAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList([LSABlock(cfg) for _ in range(cfg.n_layers)])
        self.setup()

    def forward(
        self, tokens: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        """Residual stream after all blocks."""
        resid = tokens
        for block in self.blocks:
            resid = block(resid)
        return resid

    def predict(self, tokens: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, " batch"]:
        """``ŷ = −(y-entry of the query token after the last layer)``."""
        return read_prediction(self(tokens))

    @torch.no_grad()
    def set_paper_weights(
        self, layer: int, w_k: Tensor, w_q: Tensor, w_v: Tensor, p: Tensor, head: int = 0
    ) -> None:
        """Load paper-layout matrices (acting on column vectors) into one head of one layer.

        Requires ``d_head == d_model``; the other heads of the layer are zeroed.
        """
        attn = self.blocks[layer].attn
        for param in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O):
            param.zero_()
        attn.W_Q[head].copy_(w_q.T)
        attn.W_K[head].copy_(w_k.T)
        attn.W_V[head].copy_(w_v.T)
        attn.W_O[head].copy_(p.T)

    def paper_products(self, layer: int) -> tuple[Tensor, Tensor]:
        """Identifiable per-head products ``(W_K^T W_Q, P W_V)``, each ``[head, d_model, d_model]``.

        The layer maps ``e_i ↦ e_i + Σ_h (P W_V)_h Σ_j e_j e_j^T (W_K^T W_Q)_h e_i``.
        """
        attn = self.blocks[layer].attn
        kq = einsum(attn.W_K, attn.W_Q, "h dk dh, h dq dh -> h dk dq")
        pv = einsum(attn.W_O, attn.W_V, "h dh dout, h din dh -> h dout din")
        return kq.detach(), pv.detach()


def build_lsa(
    d: int, n_layers: int, *, n_heads: int = 1, attn: str = "linear", mlp: bool = False, **kwargs
) -> LSATransformer:
    """LSA Transformer for ``d``-dimensional regression tokens (``d_model = d + 1``)."""
    cfg = LSAConfig(d_model=d + 1, n_layers=n_layers, n_heads=n_heads, attn=attn, mlp=mlp, **kwargs)
    return LSATransformer(cfg)
