"""Query batches on a shared prefix without copying the prefix's keys and values per row.

The TransformerLens 4 bridge's attention (``PositionEmbeddingsAttentionBridge.forward``) reads a
KV cache by concatenating the cached keys/values with the new ones and expanding every
key/value head to its query heads (``repeat_kv``). On a query batch over one demonstration
prefix that is three copies of the prefix per row and layer (the cache repeated per row, the
concatenation, the expansion): about 140 MB per layer for 32 queries on a 700-token prefix
of SmolLM2-135M, several times the arithmetic.

:func:`shared_prefix_attention` runs the same attention with the prefix's keys/values read once
from a batch-1 cache: the prefix part of the scores is one matmul per key/value head over every
row and query head of its group, the queries' own part a small per-row matmul. Every hook fires
on the tensors the bridge fires it on (``hook_q/k/v``, ``hook_rot_q/k``, ``hook_attn_scores``
over prefix + query keys, ``hook_pattern``, ``hook_z``, ``hook_out``), and the mask and softmax
are the bridge's own methods. The cache is never written.

It applies only to the plain bridge attention with none of the features the bridge adds on top
(:func:`shared_prefix_applies`); elsewhere :class:`dualform.core.prefix.PrefixRun` takes the
bridge's own path. ``tests/test_prefix_attention.py`` pins it against that path, hook by hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from dualform.models.compat import CompatError, _patched, require_tested

BRIDGE_CLASS = "PositionEmbeddingsAttentionBridge"
#: Config flags of the bridge that change its attention; any of them set: the bridge's own path.
BRIDGE_FLAGS = ("use_split_qkv_input", "use_attn_in", "gated_q_proj", "rotary_interleaved_cos_sin",
                "rotary_adjacent_pairs", "use_attn_result")
#: Hugging Face attention attributes the bridge acts on; any of them present: its own path.
HF_FEATURES = ("key_multiplier", "attn_logit_softcapping", "sinks")


def shared_prefix_applies(attn) -> bool:
    """Whether ``attn`` (a block's attention) is the plain bridge attention this path
    reimplements: rotary (whole or partial), no q/k norm, gate, soft-capping, sinks, clipping
    or per-head result, and eval mode (no dropout)."""
    if type(attn).__name__ != BRIDGE_CLASS or attn.training:
        return False
    hf, config = attn.original_component, attn.config
    hf_config = getattr(hf, "config", None)
    rope = getattr(hf_config, "rope_parameters", None)
    return not (
        any(getattr(config, flag, False) for flag in BRIDGE_FLAGS)
        or any(getattr(hf, name, None) is not None for name in HF_FEATURES)
        or "q_norm" in attn.submodules or "k_norm" in attn.submodules
        or attn._modules.get("gate") is not None
        or getattr(hf_config, "clip_qkv", None) is not None
        or (isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None)
        or getattr(attn, "_layer_idx", None) is None
        or type(attn)._pre_output_projection is not _base_pre_output_projection()
    )


def _base_pre_output_projection():
    from transformer_lens.model_bridge.generalized_components import position_embeddings_attention

    return position_embeddings_attention.PositionEmbeddingsAttentionBridge._pre_output_projection


def model_applies(model) -> bool:
    """Whether every block's attention takes the shared-prefix path."""
    return all(shared_prefix_applies(block.attn) for block in model.blocks)


@contextmanager
def shared_prefix_attention(model) -> Iterator[None]:
    """Within the block every block's attention reads its cache as a shared batch-1 prefix
    (:func:`prefix_attention_forward`); restored on exit. The caller checks
    :func:`model_applies` first."""
    require_tested("shared-prefix attention", "transformer-lens", "transformers")
    with _patched(model, "forward", prefix_attention_forward, shared_prefix_applies):
        yield


def prefix_attention_forward(self, hidden_states: Tensor, *args, **kwargs):
    """The bridge's attention forward on new tokens over a cached batch-1 prefix (bound per
    attention). Without a cache it is the bridge's own forward."""
    cache = kwargs.get("past_key_values")
    cache = kwargs.get("cache") if cache is None else cache
    if cache is None or cache.get_seq_length(self._layer_idx) == 0:
        return type(self).forward(self, hidden_states, *args, **kwargs)
    layer = cache.layers[self._layer_idx]
    head_dim = self.original_component.head_dim
    position_embeddings = kwargs.get("position_embeddings")
    if position_embeddings is None:
        raise CompatError(f"{self.name}: shared-prefix attention needs the rotary position "
                          "embeddings, which this attention was not given: run it with "
                          "reuse_prefix off")
    hidden_states = self.hook_in(hidden_states)
    n_new = hidden_states.shape[1]
    q, k, v = (rearrange(proj(hidden_states), "b l (h d) -> b h l d", d=head_dim)
               for proj in (self.q, self.k, self.v))
    q, k = _rotate(self, q, k, *self._apply_position_embedding_hooks(position_embeddings))
    if hasattr(self, "hook_rot_q"):
        q, k = self.hook_rot_q(q), self.hook_rot_k(k)
    scaling = getattr(self.original_component, "scaling", head_dim**-0.5)
    scores = grouped_scores(q, k, layer.keys, scaling)
    n_keys = scores.shape[-1]
    scores = self._apply_reconstruct_attention_mask(
        attn_scores=scores, attention_mask=kwargs.get("attention_mask"), seq_len=n_keys,
        q_seq_len=n_new)
    scores = self.hook_attn_scores(scores)
    pattern = self._masked_softmax(scores, dtype=torch.float32).to(q.dtype)
    pattern = self.hook_pattern(self._scrub_compatibility_pattern_nans(pattern))
    z = rearrange(grouped_values(pattern, v, layer.values), "b h l d -> b l (h d)")
    o_weight = getattr(self.o.original_component, "weight", None)
    if isinstance(o_weight, Tensor) and o_weight.dtype.is_floating_point:
        z = z.to(o_weight.dtype)  # the bridge's cast (fp32 rotary on a lower-precision model)
    out = self.o(z)
    return self.hook_out(out), pattern


def _rotate(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """The bridge's rotary: Llama's rotate-half over the whole head, over its first
    ``cos.shape[-1]`` dims (partial rotary, e.g. Phi), or with half-width cos/sin duplicated
    (full rotary given half-width tables)."""
    from transformer_lens.model_bridge.generalized_components import (
        position_embeddings_attention as bridge_module,
    )
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rotary_dim, head_dim = cos.shape[-1], q.shape[-1]
    if rotary_dim * 2 == head_dim and bridge_module.get_rotary_pct_from_config(self.config) == 1.0:
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    elif rotary_dim < head_dim:
        q_rot, k_rot = apply_rotary_pos_emb(q[..., :rotary_dim], k[..., :rotary_dim], cos, sin)
        return (torch.cat([q_rot, q[..., rotary_dim:]], dim=-1),
                torch.cat([k_rot, k[..., rotary_dim:]], dim=-1))
    return apply_rotary_pos_emb(q, k, cos, sin)


def grouped_scores(q: Float[Tensor, "batch head q_pos d_head"],
                   k: Float[Tensor, "batch kv_head q_pos d_head"],
                   prefix_k: Float[Tensor, "1 kv_head prefix d_head"],
                   scaling: float) -> Float[Tensor, "batch head q_pos key"]:
    """``scaling · q kᵀ`` over the prefix's keys then the queries' own, each query head against
    its group's key head (``repeat_kv``'s grouping), without expanding any key."""
    batch, n_heads, n_new, _ = q.shape
    n_kv, n_prefix = prefix_k.shape[1], prefix_k.shape[2]
    grouped = rearrange(q, "b (k g) l d -> b k (g l) d", k=n_kv)
    scores = q.new_empty(batch, n_kv, n_heads // n_kv * n_new, n_prefix + n_new)
    flat = rearrange(grouped, "b k r d -> k (b r) d")
    prefix = torch.bmm(flat, prefix_k[0].to(q.dtype).transpose(1, 2))  # [kv, batch·rows, prefix]
    scores[..., :n_prefix] = rearrange(prefix, "k (b r) p -> b k r p", b=batch)
    scores[..., n_prefix:] = torch.matmul(grouped, k.transpose(2, 3))
    return rearrange(scores.mul_(scaling), "b k (g l) key -> b (k g) l key", l=n_new)


def grouped_values(pattern: Float[Tensor, "batch head q_pos key"],
                   v: Float[Tensor, "batch kv_head q_pos d_head"],
                   prefix_v: Float[Tensor, "1 kv_head prefix d_head"]
                   ) -> Float[Tensor, "batch head q_pos d_head"]:
    """``pattern · V`` over the prefix's values then the queries' own (the grouping of
    :func:`grouped_scores`)."""
    batch, n_heads, n_new, _ = pattern.shape
    n_kv, n_prefix = prefix_v.shape[1], prefix_v.shape[2]
    grouped = rearrange(pattern, "b (k g) l key -> b k (g l) key", k=n_kv)
    flat = rearrange(grouped[..., :n_prefix], "b k r p -> k (b r) p")
    prefix = torch.bmm(flat, prefix_v[0].to(pattern.dtype))  # [kv, batch·rows, d_head]
    z = torch.matmul(grouped[..., n_prefix:], v.to(pattern.dtype))
    z = z + rearrange(prefix, "k (b r) d -> b k r d", b=batch)
    return rearrange(z, "b k (g l) d -> b (k g) l d", l=n_new)
