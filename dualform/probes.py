"""Focused activation capture for TransformerLens models — reusable on its own.

This module depends on nothing else in ``dualform`` and imports only torch (and jaxtyping, for its
annotations, when installed — TransformerLens brings it; inside dualform, :class:`ProbeError` also
derives from ``dualform.errors.DualformError`` when that imports): copy it into another project
and it works on TransformerLens 4 ``TransformerBridge`` models (however they were built:
``build_bridge_from_module``, ``boot_transformers``, ``boot_native``), on any ``HookedRootModule``
(anything with a ``hook_dict`` of hook points), and on TransformerLens 2.x/3.x
``HookedTransformer`` models.

>>> cap = capture(model, tokens, hooks=("rot_q", "rot_k", "v", "z"), layers=[0, 5])
>>> cap["z", 5]                   # ActivationCache-style keys: (short name, layer) ...
>>> cap["blocks.5.attn.hook_z"]   # ... or the full TransformerLens name
>>> cap.key_vectors(5).shape      # [batch, pos, head, d_head], GQA expanded to query heads

Only the requested hooks of the requested layers are recorded, so the cost stays close to a
bare forward (see ``dualform bench``). Every hook added here is removed again on exit, also when
the forward raises and also on TransformerLens < 4, where ``add_hook`` returns no handle. A
requested hook that exists but does not fire (``hook_rot_q`` on a ``boot_native`` model) or that
fires with something else than its name says (``hook_attn_scores`` fired after the pattern, with
the pattern) is refused with a :class:`ProbeError`, never returned empty or wrong.
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Sequence, ValuesView
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

try:  # shapes in the annotations (checked at run time in dualform's own tests); a copy of this
    from jaxtyping import Float  # file in a project without jaxtyping still works
except ImportError:  # pragma: no cover
    Float = None

#: Short names (TransformerLens ``get_act_name`` spelling) → the hook name inside ``blocks.{layer}``.
HOOK_ALIASES: dict[str, str] = {
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
    "attn_scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
}
#: Other accepted spellings of a short name (besides the ``hook_`` prefix: ``hook_z`` is ``z``).
SYNONYMS: dict[str, str] = {"scores": "attn_scores"}
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


try:  # inside dualform an expected failure (one message in the CLI); copied elsewhere, a ValueError
    from dualform.errors import DualformError as ExpectedError
except ImportError:  # pragma: no cover - this file copied into another project
    ExpectedError = Exception


class ProbeError(ExpectedError, ValueError):
    """Bad hook name or layer index, or a hook this model cannot give; the message says why."""


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


def canonical_short_name(name: str) -> str | None:
    """``"hook_z"``/``"z"`` → ``"z"``, ``"scores"`` → ``"attn_scores"``; ``None`` if not a short name."""
    base = name.removeprefix("hook_")
    base = SYNONYMS.get(base, base)
    return base if base in HOOK_ALIASES else None


def hook_name(name: str, layer: int | None = None) -> str:
    """Map a short name (``"q"``, ``"hook_q"``) and a layer to the full TL hook name; full names
    pass through."""
    short = canonical_short_name(name)
    if short is None:
        return name
    if layer is None:
        raise ProbeError(f"Short hook name {name!r} needs a layer index.")
    return f"blocks.{int(layer)}.{HOOK_ALIASES[short]}"


def short_name(full: str) -> str | None:
    """Inverse of :func:`hook_name` for per-layer hooks (``None`` if it has no short name)."""
    match = _LAYER_RE.match(full)
    if match is None:
        return None
    return next((s for s, suffix in HOOK_ALIASES.items() if suffix == match.group(2)), None)


def _as_names(hooks: str | Iterable[str]) -> list[str]:
    """A single string is one hook name (``"rot_q"``), never its characters."""
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    bad = [h for h in names if not isinstance(h, str)]
    if bad:
        raise ProbeError(f"Hook names must be strings; got {bad[0]!r}.")
    return names


_FIRING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def available_short_names(model) -> list[str]:
    """Short names whose hook exists in layer 0 of this model *and* gives what its name says.

    A hook point can exist and never fire (``hook_rot_q``/``hook_rot_k`` of a ``boot_native``
    bridge, which rotates inside its own attention module), and ``hook_attn_scores`` can fire
    after the softmax with the pattern (a bridge over a module that returns only the weights).
    To tell, the first call on a model runs one 2-token forward with only layer 0's probe hooks
    attached (hooks the caller has on are suspended meanwhile); the answer is cached per model.
    """
    if model not in _FIRING:
        _FIRING[model] = _firing_short_names(model)
    return list(_FIRING[model])


def forget_firing(model) -> None:
    """Drop the cached answer of :func:`available_short_names` for ``model``: call it after
    changing which hooks fire (``dualform.models.compat.install_attention_hooks`` does)."""
    _FIRING.pop(model, None)


def _firing_short_names(model) -> list[str]:
    hook_dict = model.hook_dict  # a bridge rebuilds this dict on every access: read it once
    existing = [s for s in HOOK_ALIASES if hook_name(s, 0) in hook_dict]
    order: dict[str, int] = {}
    counter = itertools.count()

    def seen(activation: Tensor, hook, *, short: str) -> None:
        order.setdefault(short, next(counter))

    tokens = torch.zeros((1, 2), dtype=torch.long, device=_input_device(model))
    ours = [(hook_name(s, 0), partial(seen, short=s)) for s in existing]
    with _others_suspended(hook_dict), hooks(model, ours), torch.no_grad():
        model(tokens)
    if "attn_scores" in order and order["attn_scores"] > order.get("pattern", order["attn_scores"]):
        del order["attn_scores"]
    return [s for s in existing if s in order]


@contextmanager
def _others_suspended(hook_dict: dict) -> Iterator[None]:
    """The hooks already on these hook points (say, an intervention the caller has on) do not
    run inside the block: the firing probe sees the bare model and cannot upset them."""
    points = {id(p): p for p in hook_dict.values()}.values()
    saved = [(p, dict(p._forward_hooks)) for p in points if p._forward_hooks]
    for point, _ in saved:
        point._forward_hooks.clear()
    try:
        yield
    finally:
        for point, before in saved:
            point._forward_hooks.update(before)


def _input_device(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def resolve_hooks(model, hooks: str | Iterable[str], layers: Sequence[int] | None) -> list[str]:
    """Full hook names for ``hooks`` × ``layers``; raise :class:`ProbeError` on bad input."""
    total = n_layers(model)
    layer_list = list(range(total)) if layers is None else [int(x) for x in layers]
    bad_layers = [x for x in layer_list if not 0 <= x < total]
    if bad_layers:
        raise ProbeError(f"Layer index {bad_layers} out of range: valid layers are 0..{total - 1}.")
    names: list[str] = []
    hook_dict = model.hook_dict  # a bridge rebuilds this dict on every access: read it once
    for name in _as_names(hooks):
        is_short = canonical_short_name(name) is not None
        candidates = [hook_name(name, x) for x in layer_list] if is_short else [name]
        missing = [c for c in candidates if c not in hook_dict]
        if missing:
            raise ProbeError(
                f"Unknown hook {name!r} for this model (no {missing[0]!r}). Valid short names: "
                f"{', '.join(available_short_names(model))}; or any full name such as "
                f"'blocks.0.attn.hook_z' (see dualform info MODEL for the list)."
            )
        names.extend(c for c in candidates if c not in names)
    return names


def _attach(point, fn: Callable) -> list:
    """Add ``fn`` as a forward hook on ``point``; return exactly the handles that appeared.

    TransformerLens 4 returns the handle from ``add_hook``; 2.x/3.x return ``None`` but append a
    ``LensHandle`` to ``point.fwd_hooks`` in every version, so the new handles are found there.
    """
    before = {id(h) for h in point.fwd_hooks}
    point.add_hook(fn, dir="fwd")
    return [h for h in point.fwd_hooks if id(h) not in before]


def _detach(point, handles: list) -> None:
    """Remove ``handles`` (and only them) from ``point``, in place."""
    for handle in handles:
        handle.hook.remove()
    ours = {id(h) for h in handles}
    point.fwd_hooks[:] = [h for h in point.fwd_hooks if id(h) not in ours]


@contextmanager
def hooks(model, fwd_hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Add ``(hook name, fn(activation, hook))`` pairs for the duration of the block.

    Only the hooks added here are removed on exit (also on error), on every TransformerLens
    version; hooks the caller added before are left in place.
    """
    added: list[tuple[object, list]] = []
    hook_dict = model.hook_dict  # a bridge rebuilds this dict on every access: read it once
    try:
        for name, fn in fwd_hooks:
            if name not in hook_dict:
                raise ProbeError(f"Unknown hook {name!r}; see available_short_names(model).")
            point = hook_dict[name]
            added.append((point, _attach(point, fn)))
        yield
    finally:
        for point, handles in reversed(added):
            _detach(point, handles)


@dataclass(eq=False, repr=False)
class Capture:
    """Recorded activations, keyed by full TL hook name — usable like an ``ActivationCache``.

    ``cap["blocks.0.attn.hook_z"]``, ``cap["z", 0]``, ``"z" in cap``, ``len(cap)``, iteration,
    ``.keys()``/``.values()``/``.items()`` (full names) and ``.to(device)``. Layouts
    (TransformerLens): q/rot_q/z ``[batch, pos, head, d_head]``; k/v/rot_k
    ``[batch, pos, kv_head, d_head]``; attn_scores/pattern ``[batch, head, q_pos, k_pos]``;
    attn_out/resid ``[batch, pos, d_model]``. :meth:`query_vectors`, :meth:`key_vectors` and
    :meth:`value_vectors` give the vectors attention uses, per query head.
    """

    activations: dict[str, Tensor]
    n_heads: int
    n_kv_heads: int
    logits: Tensor | None = None
    layers: tuple[int, ...] = field(default_factory=tuple)

    # --- ActivationCache-like mapping -------------------------------------------------------
    def _full(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise KeyError(f"Use cap[name, layer] (2 items), not {key!r}.")
            return hook_name(key[0], key[1])
        if canonical_short_name(key) is not None and key not in self.activations:
            raise KeyError(f"{key!r} needs a layer: cap[{key!r}, {self.layers[0] if self.layers else 0}]")
        return key

    def __getitem__(self, key: str | tuple[str, int]) -> Tensor:
        name = self._full(key)
        if name not in self.activations:
            raise KeyError(f"{name!r} was not captured; captured: {self._captured()}")
        return self.activations[name]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple):
            return len(key) == 2 and isinstance(key[0], str) and hook_name(*key) in self.activations
        if not isinstance(key, str):
            return False
        short = canonical_short_name(key)
        if short is not None and key not in self.activations:
            return any(short_name(n) == short for n in self.activations)
        return key in self.activations

    def __len__(self) -> int:
        return len(self.activations)

    def __iter__(self) -> Iterator[str]:
        return iter(self.activations)

    def keys(self, *args) -> KeysView[str]:
        """The full hook names (as ``ActivationCache.keys()``); key vectors: :meth:`key_vectors`."""
        if args:
            raise TypeError("Capture.keys() takes no layer; use cap.key_vectors(layer).")
        return self.activations.keys()

    def values(self, *args) -> ValuesView[Tensor]:
        """The tensors; value vectors of a layer: :meth:`value_vectors`."""
        if args:
            raise TypeError("Capture.values() takes no layer; use cap.value_vectors(layer).")
        return self.activations.values()

    def items(self) -> ItemsView[str, Tensor]:
        return self.activations.items()

    def to(self, device: str | torch.device) -> Capture:
        """A copy with every tensor (and the logits) on ``device``."""
        moved = {name: t.to(device) for name, t in self.activations.items()}
        logits = None if self.logits is None else self.logits.to(device)
        return Capture(moved, self.n_heads, self.n_kv_heads, logits=logits, layers=self.layers)

    def get(self, name: str, layer: int | None = None) -> Tensor:
        """``cap.get("z", 3)`` is ``cap["z", 3]``; full names need no layer. KeyError if absent."""
        return self[(name, layer)] if layer is not None else self[name]

    def _captured(self) -> str:
        shorts = sorted({short_name(n) or n for n in self.activations})
        return f"{', '.join(shorts) or 'nothing'} of layers {list(self.layers)}"

    def __repr__(self) -> str:
        first = next(iter(self.activations.values()), None)
        tail = "" if first is None else (f", dtype={str(first.dtype).removeprefix('torch.')}, "
                                         f"device={first.device}")
        shorts = list(dict.fromkeys(short_name(n) or n for n in self.activations))
        hooks_text = ", ".join(shorts[:6]) + (f", … (+{len(shorts) - 6})" if len(shorts) > 6 else "")
        layers = list(self.layers)
        layers_text = str(layers) if len(layers) <= 8 else f"{layers[0]}..{layers[-1]} ({len(layers)})"
        return (f"Capture(hooks=[{hooks_text}], layers={layers_text}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}{tail})")

    # --- attention vectors per query head -----------------------------------------------------
    def stack(self, short: str) -> Tensor:
        """``short`` for every captured layer, stacked on a new leading ``layer`` axis."""
        return torch.stack([self[short, layer] for layer in self.layers])

    def expand_kv(self, t: Float[Tensor, "batch pos kv_head d_head"]) -> Float[
        Tensor, "batch pos head d_head"
    ]:
        """Repeat each KV head for the query heads of its group (HF ``repeat_kv`` order)."""
        return repeat_kv(t, self.n_heads, dim=2)

    def query_vectors(self, layer: int, *, rotated: bool = True) -> Float[
        Tensor, "batch pos head d_head"
    ]:
        """Queries after the rotary embedding when captured (the vectors scores use), else raw."""
        return self["rot_q" if rotated and ("rot_q", layer) in self else "q", layer]

    def key_vectors(self, layer: int, *, rotated: bool = True, expand: bool = True) -> Tensor:
        """Keys per query head (``expand``) or per KV head; rotated when captured."""
        k = self["rot_k" if rotated and ("rot_k", layer) in self else "k", layer]
        return self.expand_kv(k) if expand else k

    def value_vectors(self, layer: int, *, expand: bool = True) -> Tensor:
        """Values per query head (``expand``) or per KV head."""
        v = self["v", layer]
        return self.expand_kv(v) if expand else v


def capture(
    model,
    tokens: Tensor | str,
    hooks: str | Iterable[str] = ("q", "k", "v", "z"),
    layers: Sequence[int] | None = None,
    *,
    detach: bool = True,
    **forward_kwargs,
) -> Capture:
    """Run one forward and record only ``hooks`` of ``layers`` (all layers by default).

    ``hooks`` is one name or several: short names (:data:`HOOK_ALIASES`, TL's spelling, with or
    without ``hook_``; ``"scores"`` is ``"attn_scores"``) or full TL hook names. Extra keyword
    arguments go to the model's forward (e.g. ``attention_mask``, ``past_key_values``). Raises
    :class:`ProbeError` when a requested hook does not fire, or when ``hook_attn_scores`` fires
    after ``hook_pattern`` (then it holds the pattern, not the scores).
    """
    if isinstance(tokens, str):
        tokens = model.to_tokens(tokens, truncate=False)
    if isinstance(tokens, Tensor) and getattr(model, "cfg", None) is not None:
        check_context(model, tokens.shape[-1])
    names = resolve_hooks(model, hooks, layers)
    store: dict[str, Tensor] = {}
    order: dict[str, int] = {}
    counter = itertools.count()

    def record(activation: Tensor, hook, *, name: str) -> Tensor | None:
        # Aliased hooks (hook_z is o.hook_in) report their own name; key by the requested one.
        order.setdefault(name, next(counter))
        if detach:
            store[name] = activation.detach()
            return None
        # Hand the (layout-converted) tensor back so the forward uses it: gradients with
        # respect to ``store[name]`` then flow, as attribution patching needs.
        store[name] = activation
        return activation

    def mark(activation: Tensor, hook, *, name: str) -> None:
        order.setdefault(name, next(counter))

    bound = [(name, partial(record, name=name)) for name in names]
    patterns = _patterns_to_watch(model, names)
    bound += [(p, partial(mark, name=p)) for p in patterns if p not in names]
    with _hooked(model, bound), torch.set_grad_enabled(not detach and torch.is_grad_enabled()):
        logits = model(tokens, **forward_kwargs)
    _check_fired(model, names, order, patterns)
    store = {name: store[name] for name in names}  # in the order asked, not the order fired
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


def _patterns_to_watch(model, names: list[str]) -> dict[str, str]:
    """``{pattern hook: scores hook}`` of each requested ``hook_attn_scores`` (to check order)."""
    suffix_scores, suffix_pattern = HOOK_ALIASES["attn_scores"], HOOK_ALIASES["pattern"]
    hook_dict = model.hook_dict
    watch = {}
    for name in names:
        if name.endswith(suffix_scores):
            pattern = name.removesuffix(suffix_scores) + suffix_pattern
            if pattern in hook_dict:
                watch[pattern] = name
    return watch


def _check_fired(model, names: list[str], order: dict[str, int], patterns: dict[str, str]) -> None:
    """The one refusal of hooks that did not give what they name: a declared hook that never
    fired (:func:`silent_hooks_message`), or ``hook_attn_scores`` firing after the pattern."""
    missing = [n for n in names if n not in order]
    if missing:
        raise ProbeError(f"{silent_hooks_message(model, missing)} Short names that fire here: "
                         f"{', '.join(available_short_names(model))}.")
    late = [s for p, s in patterns.items() if p in order and order[s] > order[p]]
    if late:
        raise ProbeError(
            f"{late[0]!r} fired after the softmax, with the attention pattern, not the pre-softmax "
            f"scores (this bridge's attention module returns only the weights). Capture 'q'/'k' "
            f"(and 'rot_q'/'rot_k' when they fire) and compute q·k instead."
        )


def is_rotary(model) -> bool:
    """Whether the model rotates queries and keys (rotary positions): scores use rot_q · rot_k."""
    return getattr(model.cfg, "positional_embedding_type", None) == "rotary"


def score_vector_hooks(model) -> tuple[str, str]:
    """The short names of the vectors the attention scores are computed from.

    ``("rot_q", "rot_k")`` on a rotary model, ``("q", "k")`` otherwise. A rotary model whose
    rotated vectors are not exposed (``boot_native``) raises: unrotated q·k would be wrong.
    """
    available = available_short_names(model)
    if "rot_q" in available and "rot_k" in available:
        return ("rot_q", "rot_k")
    if is_rotary(model):
        raise ProbeError(
            "This rotary model does not expose its rotated queries/keys (hook_rot_q/hook_rot_k do "
            "not fire, as on a TransformerBridge.boot_native model), and unrotated q·k are not "
            "the vectors its attention uses. Build the bridge with build_bridge_from_module or "
            "boot_transformers over a Hugging Face model instead."
        )
    return ("q", "k")


def attention_scale(model, layer: int) -> float:
    """The factor the model multiplies ``q · k`` by before the softmax (usually 1/√d_head)."""
    attn = model.blocks[layer].attn
    hf_attn = getattr(attn, "original_component", None)
    scaling = getattr(hf_attn, "scaling", None)
    if scaling is not None:
        return float(scaling)
    divisor = getattr(attn, "attn_scale", None)  # HookedTransformer: scores = q·k / attn_scale
    if isinstance(divisor, (int, float)) and divisor:
        return 1.0 / float(divisor)
    scale = float(model.cfg.d_head) ** -0.5
    if getattr(model.cfg, "scale_attn_by_inverse_layer_idx", False):
        scale /= float(layer + 1)
    return scale
