"""A small TransformerLens-native causal LM whose attention is momentum attention.

Why a native ``HookedRootModule`` rather than a bridge over a small HF config plus the drop-in
hooks: η must be a *trainable parameter* (``η = sigmoid(logit)`` per head) that lives in the
model's ``state_dict`` and is saved with it, the momentum must be on for every forward (training,
``capture``, ``dual_form``) without the caller remembering a context manager, and a plain PyTorch
module trains several times faster on CPU than a bridge forward. The hook names and ``cfg`` fields
are those of other TransformerLens models, so :func:`dualform.probes.capture`,
:func:`dualform.core.dual_form.dual_form` and :func:`dualform.core.relaxed.relaxed_linear_attention` work
on it unchanged.

Architecture: pre-LayerNorm blocks, rotary (default, as Llama) or learned (as GPT-2) positions,
GELU MLP (or attention-only), optional grouped-query attention. Without a hook on the scores or
the pattern, attention runs fused (``scaled_dot_product_attention``); a hook there makes the
model materialise them (same result). Per layer and query head (``v`` of its KV head):

    z_t = Σ_{i≤t} softmax(q_t·k_i/√d_head) v_i  +  Σ_{i<t} η_h^{t−i} v_i     (momentum term)

Hooks: ``hook_embed``, ``hook_pos_embed`` (learned positions), ``blocks.{l}.hook_resid_pre``,
``blocks.{l}.attn.hook_q`` ``[batch, pos, head, d_head]``, ``hook_rot_q`` (rotary),
``hook_k``/``hook_rot_k``/``hook_v``
``[batch, pos, kv_head, d_head]``, ``hook_attn_scores`` (scaled, −inf where masked) and
``hook_pattern`` ``[batch, head, q_pos, k_pos]``, ``hook_momentum`` and ``hook_z``
``[batch, pos, head, d_head]``, ``blocks.{l}.hook_attn_out``, ``hook_resid_mid``,
``mlp.hook_pre``/``hook_post``, ``hook_mlp_out``, ``hook_resid_post``, ``ln_final.hook_normalized``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from einops import einsum
from jaxtyping import Float, Int
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from dualform.core.momentum import eta_from_logit, head_momentum, logit_from_eta
from dualform.experiments.momentum.functional import (
    apply_rotary,
    causal_scores,
    fused_attention,
    rotary_tables,
    softmax_pattern,
)
from dualform.infra.io import write_bytes_atomic, write_json_atomic
from dualform.probes import repeat_kv


@dataclass
class MomentumLMConfig:
    """Shape of a :class:`MomentumLM`. ``eta = 0`` (or ``momentum=False``) is the vanilla twin."""

    d_vocab: int
    n_ctx: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_key_value_heads: int | None = None  # None → n_heads (no GQA)
    d_head: int | None = None  # None → d_model // n_heads
    d_mlp: int | None = None  # None → 4 · d_model
    attn_only: bool = False  # no MLP sublayers
    positional: str = "rotary"  # "rotary" (Llama-style, relative) or "learned" (GPT-2 style)
    rotary_base: float = 10_000.0
    eta: float = 0.0  # initial / fixed η in [0, 1); 0 → no momentum
    learn_eta: bool = False
    momentum: bool = True
    seed: int = 0  # initial weights: ``torch.Generator().manual_seed(seed)`` unless one is passed

    def __post_init__(self) -> None:
        self.n_key_value_heads = self.n_key_value_heads or self.n_heads
        self.d_head = self.d_head or self.d_model // self.n_heads
        self.d_mlp = self.d_mlp or 4 * self.d_model
        if self.n_heads % self.n_key_value_heads:
            raise ValueError("n_heads must be a multiple of n_key_value_heads.")
        if self.positional not in ("rotary", "learned"):
            raise ValueError(f"positional must be 'rotary' or 'learned'; got {self.positional!r}.")
        if not 0.0 <= self.eta < 1.0:
            raise ValueError(f"eta must lie in [0, 1); got {self.eta}.")

    @property
    def use_momentum(self) -> bool:
        return self.momentum and (self.eta > 0 or self.learn_eta)


class MomentumAttention(nn.Module):
    """Multi-head (optionally grouped-query) causal attention plus the momentum term."""

    def __init__(self, cfg: MomentumLMConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.cfg = cfg
        h, kv, dm, dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_head
        std, g = 0.02, generator
        self.W_Q = nn.Parameter(torch.randn(h, dm, dh, generator=g) * std)
        self.W_K = nn.Parameter(torch.randn(kv, dm, dh, generator=g) * std)
        self.W_V = nn.Parameter(torch.randn(kv, dm, dh, generator=g) * std)
        self.W_O = nn.Parameter(torch.randn(h, dh, dm, generator=g) * std / math.sqrt(2 * cfg.n_layers))
        self.b_Q, self.b_K = nn.Parameter(torch.zeros(h, dh)), nn.Parameter(torch.zeros(kv, dh))
        self.b_V, self.b_O = nn.Parameter(torch.zeros(kv, dh)), nn.Parameter(torch.zeros(dm))
        logit = torch.full((h,), logit_from_eta(cfg.eta) if cfg.eta > 0 else -30.0)
        if cfg.learn_eta:
            self.eta_logit = nn.Parameter(logit)
        else:
            self.register_buffer("eta_logit", logit)
        names = ["q", "k", "v", "attn_scores", "pattern", "momentum", "z"]
        if cfg.positional == "rotary":
            names += ["rot_q", "rot_k"]
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())

    def eta(self) -> Float[Tensor, " head"]:
        """Per-head ``η = sigmoid(logit)``, or zeros when momentum is off."""
        if not self.cfg.use_momentum:
            return torch.zeros_like(self.eta_logit)
        return eta_from_logit(self.eta_logit)

    def _pattern_hooked(self) -> bool:
        """Materialise scores/pattern only when a hook reads them (else fused SDPA, faster)."""
        return bool(self.hook_attn_scores._forward_hooks or self.hook_pattern._forward_hooks)

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], key_mask: Tensor | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        proj = "b p dm, h dm dh -> b p h dh"
        q = self.hook_q(einsum(x, self.W_Q, proj) + self.b_Q)
        k = self.hook_k(einsum(x, self.W_K, proj) + self.b_K)
        v = self.hook_v(einsum(x, self.W_V, proj) + self.b_V)
        if self.cfg.positional == "rotary":
            cos, sin = rotary_tables(x.shape[1], self.cfg.d_head, self.cfg.rotary_base, x.device)
            q = self.hook_rot_q(apply_rotary(q, cos, sin))
            k = self.hook_rot_k(apply_rotary(k, cos, sin))
        k_rep, v_rep = (repeat_kv(t, self.cfg.n_heads, dim=2) for t in (k, v))
        if self._pattern_hooked():
            scores = self.hook_attn_scores(causal_scores(q, k_rep, key_mask))
            pattern = self.hook_pattern(softmax_pattern(scores, key_mask is not None))
            z = einsum(pattern, v_rep, "b h qp kp, b kp h d -> b qp h d")
        else:
            z = fused_attention(q, k_rep, v_rep, key_mask)
        if self.cfg.use_momentum:
            z = z + self.hook_momentum(head_momentum(v, self.eta(), key_mask))
        z = self.hook_z(z)
        return einsum(z, self.W_O, "b p h d, h d dm -> b p dm") + self.b_O


class MLP(nn.Module):
    """``MLP(x) = GELU(x W_in + b_in) W_out + b_out``."""

    def __init__(self, cfg: MomentumLMConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, cfg.d_mlp, generator=generator) * 0.02)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        std_out = 0.02 / math.sqrt(2 * cfg.n_layers)
        self.W_out = nn.Parameter(torch.randn(cfg.d_mlp, cfg.d_model, generator=generator) * std_out)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        post = self.hook_post(nn.functional.gelu(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class LayerNorm(nn.Module):
    """LayerNorm with a ``hook_normalized`` (as TransformerLens)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.ones(d_model)), nn.Parameter(torch.zeros(d_model))
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        normed = nn.functional.layer_norm(x, x.shape[-1:], eps=1e-5)
        return self.hook_normalized(normed) * self.w + self.b


class Block(nn.Module):
    """Pre-LN block: ``r ← r + Attn(LN(r))``, ``r ← r + MLP(LN(r))``."""

    def __init__(self, cfg: MomentumLMConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1, self.attn = LayerNorm(cfg.d_model), MomentumAttention(cfg, generator)
        names = ["resid_pre", "attn_out", "resid_post"]
        if not cfg.attn_only:
            self.ln2, self.mlp = LayerNorm(cfg.d_model), MLP(cfg, generator)
            names += ["resid_mid", "mlp_out"]
        for name in names:
            setattr(self, f"hook_{name}", HookPoint())

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"], key_mask: Tensor | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid), key_mask))
        if not self.cfg.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class MomentumLM(HookedRootModule):
    """Causal LM with momentum attention; ``MomentumLM(cfg with eta=0)`` is its vanilla twin.

    Initial weights are drawn from ``generator`` (default: a fresh one seeded with ``cfg.seed``),
    never from the global RNG, so the twins of one seed start from the same weights whatever
    else the process has drawn.
    """

    def __init__(self, cfg: MomentumLMConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        g = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model, generator=g) * 0.02)
        if cfg.positional == "learned":
            self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model, generator=g) * 0.01)
        self.blocks = nn.ModuleList([Block(cfg, g) for _ in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg.d_model)
        self.W_U = nn.Parameter(torch.randn(cfg.d_model, cfg.d_vocab, generator=g) * 0.02)
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.hook_pos_embed = HookPoint()
        self.setup()

    def forward(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits. ``attention_mask`` ``[batch, pos]`` (1 = real token) masks padding keys."""
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"{tokens.shape[-1]} tokens exceed n_ctx={self.cfg.n_ctx}.")
        key_mask = None if attention_mask is None else attention_mask.to(torch.bool)
        resid = self.hook_embed(self.W_E[tokens])
        if self.cfg.positional == "learned":
            resid = resid + self.hook_pos_embed(self.W_pos[: tokens.shape[-1]])
        for block in self.blocks:
            resid = block(resid, key_mask)
        return self.ln_final(resid) @ self.W_U

    def etas(self) -> Float[Tensor, "layer head"]:
        """η per layer and head (zeros for the vanilla twin)."""
        return torch.stack([block.attn.eta() for block in self.blocks]).detach()

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory ``path`` (atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        write_bytes_atomic(path / "model.safetensors", safetensors_bytes(state))
        write_json_atomic(path / "config.json", asdict(self.cfg))
        return path

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> MomentumLM:
        """Inverse of :meth:`save`; ``dtype`` defaults to the saved weights' dtype."""
        path = Path(path)
        cfg = MomentumLMConfig(**json.loads((path / "config.json").read_text()))
        state = load_file(path / "model.safetensors")
        model = cls(cfg).to(dtype or state["W_E"].dtype)
        model.load_state_dict(state)
        return model.to(device)

