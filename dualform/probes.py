"""Focused activation capture for TransformerLens models — reusable on its own.

This module depends on nothing else in ``dualform``: copy it into another project and it works
on any ``TransformerBridge`` or ``HookedRootModule`` (anything with a ``hook_dict``).

>>> cap = capture(model, tokens, hooks=("rot_q", "rot_k", "v", "z"), layers=[0, 5])
>>> cap.keys(5).shape            # [batch, pos, head, d_head], GQA expanded to query heads
>>> cap["blocks.5.attn.hook_z"]  # full TransformerLens names work too

Only the requested hooks of the requested layers are recorded, so the cost stays close to a
bare forward (see ``dualform bench``), and every hook added here is removed again on exit,
also when the forward raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

#: Short names → the TransformerLens hook name inside ``blocks.{layer}``.
HOOK_ALIASES: dict[str, str] = {
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
    "scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
}
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: Hooks whose second axis is the head axis after TransformerLens conversion.
_PER_KV_HEAD = ("k", "v", "rot_k")


try:  # inside dualform an expected failure (one message in the CLI); copied elsewhere, a ValueError
    from dualform.errors import DualformError as ExpectedError
except ImportError:  # pragma: no cover - this file copied into another project
    ExpectedError = Exception


class ProbeError(ExpectedError, ValueError):
    """Bad hook name or layer index; the message lists the valid ones."""


class ContextLengthError(ProbeError):
    """A prompt or text is longer than the model's context window (nothing is truncated)."""


def check_context(model, n_tokens: int, what: str = "The prompt") -> None:
    """Raise :class:`ContextLengthError` if ``n_tokens`` exceeds ``model.cfg.n_ctx``: the one
    context check of capture, dual_form, finetune_kv and prompt_tokens."""
    n_ctx = int(model.cfg.n_ctx)
    if n_tokens > n_ctx:
        name = getattr(model.cfg, "model_name", None) or "the model"
        raise ContextLengthError(
            f"{what} has {n_tokens} tokens but {name} has a context window of {n_ctx} "
            "tokens (cfg.n_ctx); nothing is truncated: use fewer or shorter demonstrations/texts."
        )


def n_layers(model) -> int:
    return int(model.cfg.n_layers)


def head_counts(model) -> tuple[int, int]:
    """``(n_heads, n_kv_heads)``; ``n_kv_heads == n_heads`` without grouped-query attention."""
    n_heads = int(model.cfg.n_heads)
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    return n_heads, int(n_kv)


def repeat_kv(t: Tensor, n_heads: int, *, dim: int) -> Tensor:
    """Grouped-query attention: repeat each KV head along ``dim`` for the ``n_heads`` query heads
    of the model, query head ``h`` getting KV head ``h // (n_heads / n_kv)`` (HF ``repeat_kv``)."""
    n_kv = t.shape[dim]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv} KV heads evenly")
    return t.repeat_interleave(n_heads // n_kv, dim=dim)


def hook_name(name: str, layer: int | None = None) -> str:
    """Map a short name (``"q"``) and a layer to the full TL hook name; full names pass through."""
    if name in HOOK_ALIASES:
        if layer is None:
            raise ProbeError(f"Short hook name {name!r} needs a layer index.")
        return f"blocks.{layer}.{HOOK_ALIASES[name]}"
    return name


def short_name(full: str) -> str | None:
    """Inverse of :func:`hook_name` for per-layer hooks (``None`` if it has no short name)."""
    match = _LAYER_RE.match(full)
    if match is None:
        return None
    return next((s for s, suffix in HOOK_ALIASES.items() if suffix == match.group(2)), None)


def available_short_names(model) -> list[str]:
    """Short names whose hook exists in layer 0 of this model."""
    hook_dict = model.hook_dict  # a bridge rebuilds this dict on every access: read it once
    return [s for s in HOOK_ALIASES if hook_name(s, 0) in hook_dict]


def resolve_hooks(model, hooks: Iterable[str], layers: Sequence[int] | None) -> list[str]:
    """Full hook names for ``hooks`` × ``layers``; raise :class:`ProbeError` on bad input."""
    total = n_layers(model)
    layer_list = list(range(total)) if layers is None else [int(x) for x in layers]
    bad_layers = [x for x in layer_list if not 0 <= x < total]
    if bad_layers:
        raise ProbeError(f"Layer index {bad_layers} out of range: valid layers are 0..{total - 1}.")
    names: list[str] = []
    hook_dict = model.hook_dict  # a bridge rebuilds this dict on every access: read it once
    for name in hooks:
        candidates = [hook_name(name, x) for x in layer_list] if name in HOOK_ALIASES else [name]
        missing = [c for c in candidates if c not in hook_dict]
        if missing:
            raise ProbeError(
                f"Unknown hook {name!r} for this model (no {missing[0]!r}). Valid short names: "
                f"{', '.join(available_short_names(model))}; or any full name such as "
                f"'blocks.0.attn.hook_z' (see dualform info MODEL for the list)."
            )
        names.extend(c for c in candidates if c not in names)
    return names


@contextmanager
def hooks(model, fwd_hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Add ``(hook name, fn(activation, hook))`` pairs for the duration of the block.

    Only the hooks added here are removed on exit (also on error); hooks the caller added
    before are left in place.
    """
    added = []
    hook_dict = model.hook_dict  # a bridge rebuilds this dict on every access: read it once
    try:
        for name, fn in fwd_hooks:
            if name not in hook_dict:
                raise ProbeError(f"Unknown hook {name!r}; see available_short_names(model).")
            point = hook_dict[name]
            added.append((point, point.add_hook(fn, dir="fwd")))
        yield
    finally:
        for point, handle in added:
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)


@dataclass
class Capture:
    """Recorded activations, keyed by full TL hook name, with per-layer accessors.

    Layouts (TransformerLens): q/rot_q/z ``[batch, pos, head, d_head]``; k/v/rot_k
    ``[batch, pos, kv_head, d_head]``; scores/pattern ``[batch, head, q_pos, k_pos]``;
    attn_out/resid ``[batch, pos, d_model]``.
    """

    activations: dict[str, Tensor]
    n_heads: int
    n_kv_heads: int
    logits: Tensor | None = None
    layers: tuple[int, ...] = field(default_factory=tuple)

    def __getitem__(self, name: str) -> Tensor:
        return self.activations[name]

    def __contains__(self, name: str) -> bool:
        return name in self.activations

    def get(self, short: str, layer: int) -> Tensor:
        name = hook_name(short, layer)
        if name not in self.activations:
            raise KeyError(f"{name!r} was not captured; captured: {sorted(self.activations)}")
        return self.activations[name]

    def stack(self, short: str) -> Tensor:
        """``short`` for every captured layer, stacked on a new leading ``layer`` axis."""
        return torch.stack([self.get(short, layer) for layer in self.layers])

    def expand_kv(self, t: Float[Tensor, "batch pos kv_head d_head"]) -> Float[
        Tensor, "batch pos head d_head"
    ]:
        """Repeat each KV head for the query heads of its group (HF ``repeat_kv`` order)."""
        return repeat_kv(t, self.n_heads, dim=2)

    def queries(self, layer: int, *, rotated: bool = True) -> Float[Tensor, "batch pos head d_head"]:
        """Queries after the rotary embedding when captured (the vectors scores use), else raw."""
        if rotated and hook_name("rot_q", layer) in self.activations:
            return self.get("rot_q", layer)
        return self.get("q", layer)

    def keys(self, layer: int, *, rotated: bool = True, expand: bool = True) -> Tensor:
        """Keys per query head (``expand``) or per KV head; rotated when captured."""
        use_rot = rotated and hook_name("rot_k", layer) in self.activations
        k = self.get("rot_k" if use_rot else "k", layer)
        return self.expand_kv(k) if expand else k

    def values(self, layer: int, *, expand: bool = True) -> Tensor:
        v = self.get("v", layer)
        return self.expand_kv(v) if expand else v


def capture(
    model,
    tokens: Tensor | str,
    hooks: Iterable[str] = ("q", "k", "v", "z"),
    layers: Sequence[int] | None = None,
    *,
    detach: bool = True,
    **forward_kwargs,
) -> Capture:
    """Run one forward and record only ``hooks`` of ``layers`` (all layers by default).

    ``hooks`` are short names (:data:`HOOK_ALIASES`) or full TL hook names. Extra keyword
    arguments go to the model's forward (e.g. ``attention_mask``, ``past_key_values``).
    """
    if isinstance(tokens, str):
        tokens = model.to_tokens(tokens, truncate=False)
    if isinstance(tokens, Tensor) and getattr(model, "cfg", None) is not None:
        check_context(model, tokens.shape[-1])
    names = resolve_hooks(model, hooks, layers)
    store: dict[str, Tensor] = {}

    def record(activation: Tensor, hook, *, name: str) -> Tensor | None:
        # Aliased hooks (hook_z is o.hook_in) report their own name; key by the requested one.
        if detach:
            store[name] = activation.detach()
            return None
        # Hand the (layout-converted) tensor back so the forward uses it: gradients with
        # respect to ``store[name]`` then flow, as attribution patching needs.
        store[name] = activation
        return activation

    bound = [(name, partial(record, name=name)) for name in names]
    with _hooked(model, bound), torch.set_grad_enabled(not detach and torch.is_grad_enabled()):
        logits = model(tokens, **forward_kwargs)
    silent = [n for n in names if n not in store]
    if silent:
        raise ProbeError(silent_hooks_message(model, silent))
    layer_ids = sorted({int(m.group(1)) for n in names if (m := _LAYER_RE.match(n))})
    n_heads, n_kv = head_counts(model)
    logits = logits if isinstance(logits, Tensor) else getattr(logits, "logits", None)
    return Capture(store, n_heads, n_kv, logits=logits, layers=tuple(layer_ids))


def silent_hooks_message(model, silent: Sequence[str]) -> str:
    """The error for hooks a model declares but did not fire in a forward (fused-QKV and other
    bridges whose attention runs outside the hooks): never hand back a partial capture."""
    name = type(getattr(model, "original_model", model)).__name__
    return (f"{name} declares {', '.join(silent[:4])}{' …' if len(silent) > 4 else ''} but its "
            "forward never fired them, so they cannot be captured. Models from "
            "dualform.load_model fire every declared attention hook; for a bridge built "
            "elsewhere, capture inside dualform.models.compat.attention_hooks(model).")


_hooked = hooks  # the context manager, under a name the ``hooks`` argument does not shadow


def attention_scale(model, layer: int) -> float:
    """The factor the model multiplies ``q · k`` by before the softmax (usually 1/√d_head)."""
    attn = model.blocks[layer].attn
    hf_attn = getattr(attn, "original_component", None)
    scaling = getattr(hf_attn, "scaling", None)
    if scaling is not None:
        return float(scaling)
    scale = float(model.cfg.d_head) ** -0.5
    if getattr(model.cfg, "scale_attn_by_inverse_layer_idx", False):
        scale /= float(layer + 1)
    return scale
