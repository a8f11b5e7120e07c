"""Which attention features a model has, and what the dual form can do with each.

:func:`attention_features` reads them from the Hugging Face config and modules under the
bridge: grouped-query attention, the rotary fraction, ALiBi, logit soft-capping, a sliding
window, a fused QKV projection and its layout. :func:`require_supported` refuses, naming the
feature and the model, what no dualform computation covers (e.g. a sliding window shorter than
the prompt): a refusal, never a silent wrong number.

Fused QKV layouts (rows of the fused projection's output, per family):

* ``"grouped"`` — per KV group, the group's query heads then its key and value head:
  GPT-NeoX/Pythia and BLOOM (``[head, (q k v), d_head]``), Falcon (classic and new decoder),
  GPTBigCode without multi-query.
* ``"blocks"`` — all queries, then all keys, then all values: GPT-2, Phi-3, Falcon and
  GPTBigCode with multi-query.

GPT-J keeps separate ``q_proj``/``k_proj``/``v_proj`` in Hugging Face transformers (not fused).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dualform.errors import DualformError
from dualform.probes import head_counts

#: Names Hugging Face gives a fused QKV projection inside an attention module.
FUSED_NAMES = ("query_key_value", "qkv_proj", "c_attn", "Wqkv")
#: Hugging Face model types whose fused layout dualform knows (see the module docstring).
NO_ROTARY = ("gpt2", "opt", "bloom", "gpt_bigcode")


class UnsupportedFeatureError(DualformError, ValueError):
    """The model has an attention feature this computation does not cover; the message names
    the feature and the model."""


@dataclass(frozen=True)
class AttentionFeatures:
    """The attention features of one model (read from its Hugging Face config and modules)."""

    model_type: str
    n_heads: int
    n_kv_heads: int
    d_head: int
    rotary_fraction: float | None  # None: no rotary embedding
    alibi: bool
    softcap: float | None
    sliding_window: int | None
    fused_qkv: str | None  # the fused projection's attribute name, None when q/k/v are separate
    fused_layout: str | None  # "grouped" | "blocks"; None when unfused or unknown

    @property
    def gqa(self) -> bool:
        return self.n_kv_heads != self.n_heads

    def summary(self) -> str:
        """One line for the model card."""
        kv = (f"GQA {self.n_heads}/{self.n_kv_heads}" if self.n_kv_heads > 1 else "multi-query") \
            if self.gqa else "MHA"
        rotary = "no rotary" if self.rotary_fraction is None else f"rotary {self.rotary_fraction:g}"
        parts = [kv, rotary]
        if self.alibi:
            parts.append("ALiBi")
        if self.softcap is not None:
            parts.append(f"soft-cap {self.softcap:g}")
        if self.sliding_window is not None:
            parts.append(f"sliding window {self.sliding_window}")
        if self.fused_qkv is not None:
            parts.append(f"fused QKV ({self.fused_layout or 'unknown layout'})")
        return ", ".join(parts)


def hf_config(model):
    return model.original_model.config


def attention_features(model) -> AttentionFeatures:
    config = hf_config(model)
    n_heads, n_kv = head_counts(model)
    d_head = int(model.cfg.d_head)
    fused = fused_qkv_name(model)
    return AttentionFeatures(
        model_type=str(config.model_type), n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head,
        rotary_fraction=rotary_fraction(model), alibi=has_alibi(model),
        softcap=getattr(config, "attn_logit_softcapping", None),
        sliding_window=sliding_window(model), fused_qkv=fused,
        fused_layout=fused_layout(model) if fused else None,
    )


def has_alibi(model) -> bool:
    config = hf_config(model)
    return bool(getattr(config, "alibi", False)) or config.model_type in ("bloom", "mpt")


def rotary_fraction(model) -> float | None:
    """The fraction of each head's dimensions the rotary embedding turns (None: no rotary)."""
    config = hf_config(model)
    if config.model_type in NO_ROTARY or has_alibi(model):
        return None
    rope = getattr(config, "rope_parameters", None) or {}
    for name in ("rotary_pct", "partial_rotary_factor"):
        value = rope.get(name) if isinstance(rope, dict) else None
        value = getattr(config, name, None) if value is None else value
        if value is not None:
            return float(value)
    if getattr(config, "rotary_dim", None):
        return float(config.rotary_dim) / int(model.cfg.d_head)
    return 1.0


def sliding_window(model) -> int | None:
    config = hf_config(model)
    if getattr(config, "use_sliding_window", True) is False:
        return None
    window = getattr(config, "sliding_window", None)
    return int(window) if window else None


def fused_qkv_name(model) -> str | None:
    hf_attn = model.blocks[0].attn.original_component
    return next((n for n in FUSED_NAMES if isinstance(getattr(hf_attn, n, None), torch.nn.Module)),
                None)


def fused_layout(model) -> str | None:
    """``"grouped"`` or ``"blocks"`` for the known families, None for an unknown one."""
    config = hf_config(model)
    kind = config.model_type
    if kind in ("gpt_neox", "bloom"):
        return "grouped"
    if kind in ("gpt2", "phi3"):
        return "blocks"
    if kind == "falcon":
        new, mqa = getattr(config, "new_decoder_architecture", False), config.multi_query
        return "grouped" if new or not mqa else "blocks"
    if kind == "gpt_bigcode":
        return "blocks" if config.multi_query else "grouped"
    return None


def fused_rows(layout: str, n_heads: int, n_kv_heads: int, d_head: int) -> dict[str, Tensor]:
    """Output rows of a fused QKV projection holding q ``[head·d_head]``, k and v
    ``[kv_head·d_head]``, each in head-major order."""
    group = n_heads // n_kv_heads
    if layout == "blocks":
        q_size, kv_size = n_heads * d_head, n_kv_heads * d_head
        starts = {"q": 0, "k": q_size, "v": q_size + kv_size}
        sizes = {"q": q_size, "k": kv_size, "v": kv_size}
        return {p: torch.arange(starts[p], starts[p] + sizes[p]) for p in "qkv"}
    if layout == "grouped":  # [kv_head, (group q, k, v), d_head]
        slots = torch.arange(n_kv_heads * (group + 2) * d_head).reshape(n_kv_heads, group + 2, d_head)
        return {"q": slots[:, :group].reshape(-1), "k": slots[:, group].reshape(-1),
                "v": slots[:, group + 1].reshape(-1)}
    raise UnsupportedFeatureError(f"Unknown fused QKV layout {layout!r}.")


def fused_weights(model) -> list[tuple[int, str, Tensor, int]]:
    """``(layer, "weight" | "bias", parameter, output axis)`` of every fused QKV parameter
    (empty when q/k/v are separate; the output axis is 1 for GPT-2's ``Conv1D``)."""
    name = fused_qkv_name(model) if is_bridge(model) else None
    if name is None:
        return []
    return [(layer, part, *found) for layer, block in enumerate(model.blocks)
            for part in ("weight", "bias")
            if (found := _fused_param(getattr(block.attn.original_component, name), part))]


def fused_parameters(model) -> list[Tensor]:
    """The fused QKV weights and biases of every layer (empty when q/k/v are separate)."""
    return [p for *_, p, _ in fused_weights(model)]


def _fused_param(fused: torch.nn.Module, part: str) -> tuple[Tensor, int] | None:
    """A fused parameter and its output axis (Conv1D keeps ``[in, out]``)."""
    fused = getattr(fused, "original_component", None) or fused  # a bridge may wrap it
    p = getattr(fused, part, None)
    if p is None:
        return None
    conv1d = type(fused).__name__ == "Conv1D"
    return p, (1 if conv1d and part == "weight" else 0)


def sync_fused_kv(model, *, check: bool = False) -> None:
    """Write the bridge's split K and V projections back into the model's fused QKV weight.

    The TransformerLens bridge computes with separate q/k/v copies of a fused projection, so
    finetuning W_K/W_V updates those; this keeps the Hugging Face weight the same model (its
    query rows untouched). ``check=True`` instead verifies that the split copies are the fused
    weight's rows in the known layout, and raises :class:`UnsupportedFeatureError` otherwise.
    """
    name = fused_qkv_name(model) if is_bridge(model) else None
    if name is None:
        return
    layout = fused_layout(model)
    label = f"{hf_config(model).model_type} ({type(model.original_model).__name__})"
    if layout is None:
        raise UnsupportedFeatureError(
            f"Fused QKV projection {name!r} of {label} has a layout dualform does not know, so "
            "its K/V rows cannot be identified. Supported: " + ", ".join(
                ("gpt_neox", "bloom", "gpt2", "phi3", "falcon", "gpt_bigcode")) + ".")
    n_heads, n_kv = head_counts(model)
    rows = fused_rows(layout, n_heads, n_kv, int(model.cfg.d_head))
    with torch.no_grad():
        for layer, part, param, axis in fused_weights(model):
            attn = model.blocks[layer].attn
            for proj in ("q", "k", "v") if check else ("k", "v"):
                split = getattr(getattr(attn, proj).original_component, part)
                value = split.T if axis == 1 else split
                if not check:
                    param.index_copy_(axis, rows[proj], value.to(param.dtype))
                elif not torch.equal(param.index_select(axis, rows[proj]).to(value.dtype), value):
                    raise UnsupportedFeatureError(
                        f"The fused QKV weight of {label} does not hold the bridge's {proj} "
                        f"projection in the {layout!r} layout: unknown fused layout.")


def is_bridge(model) -> bool:
    """A TransformerBridge over a Hugging Face model (what :func:`attention_features` reads); a
    bridge over a plain torch module (``boot_native``) has no Hugging Face config and is not."""
    return hasattr(model, "blocks") and hasattr(getattr(model, "original_model", None), "config")


def require_supported(model, computation: str, *,
                      n_pos: int | None = None) -> AttentionFeatures | None:
    """The model's features, after refusing what ``computation`` does not cover (``None`` for
    a model that is not a bridge, e.g. a HookedTransformer built in code)."""
    if not is_bridge(model):
        return None
    features = attention_features(model)
    label = f"{features.model_type} ({type(model.original_model).__name__})"
    window = features.sliding_window
    if window is not None and n_pos is not None and n_pos > window:
        raise UnsupportedFeatureError(
            f"{computation}: {label} uses sliding-window attention of {window} tokens and the "
            f"prompt has {n_pos}; keys beyond the window are not attended, which the dual form "
            "does not model. Use a prompt of at most the window's length.")
    return features
