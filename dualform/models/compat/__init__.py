"""Every shim over TransformerLens / transformers internals, in one place: this module, and

    prefix_attention.py  the bridge's attention on query batches over one cached prefix, without per-row copies

Each shim is tied to the library versions it was written against (:data:`TESTED`): outside that
range it raises :class:`CompatError` naming the versions, or steps aside where the newer
library no longer needs it. Patches on a model are context managers that restore the model on
exit, so a user's model is left as it was once dualform is done with it.

* :func:`kv_cache` — the bridge's attention reads ``past_key_values=`` while transformers ≥ 5
  passes ``cache=``.
* :func:`attention_hooks` — make the declared ``hook_rot_q``/``hook_rot_k`` fire on fused-QKV
  rotary bridges (GPT-NeoX, Phi-3, Falcon), run attention that Hugging Face computes inside
  its own module (OPT, GPT-J) through a function that fires ``hook_rot_q``/``hook_rot_k``,
  ``hook_attn_scores`` and ``hook_pattern`` *inside* the computation, and keep the bridge's
  float32 softmax from downcasting a float64 model.
* :func:`~dualform.models.compat.prefix_attention.shared_prefix_attention` (its own module) —
  the bridge's attention on query batches over one cached prefix, reading the prefix's keys
  and values in place instead of copying them per row (three copies per layer in the bridge).
* :func:`finite_padding_patterns` — the NaN attention rows of fully masked (left-padding)
  queries in the TransformerLens 4 bridge.
* :func:`deepcopy_module`, :func:`drop_quantization_config` — copying a bridge after an autograd
  forward, and saving a dequantised GGUF model.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import Tensor

from dualform.errors import DualformError
from dualform.probes import forget_firing

#: ``package: (lowest tested, first untested)`` major.minor versions.
TESTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "transformer-lens": ((4, 3), (4, 4)),
    "transformers": ((5, 0), (6, 0)),
}


class CompatError(DualformError, RuntimeError):
    """A shim met a library version it was not written for; the message names both."""


def installed(package: str) -> tuple[int, int]:
    """``(major, minor)`` of an installed package (``(0, 0)`` when it is not installed)."""
    try:
        parts = version(package).split(".")
    except PackageNotFoundError:
        return (0, 0)
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts[:2])  # type: ignore[return-value]


def require_tested(shim: str, *packages: str) -> None:
    """Raise :class:`CompatError` when a package is outside the range ``shim`` was tested on."""
    for package in packages:
        low, high = TESTED[package]
        have = installed(package)
        if not low <= have < high:
            raise CompatError(
                f"dualform's {shim} shim is tested with {package} "
                f"{low[0]}.{low[1]} to below {high[0]}.{high[1]}; installed: "
                f"{version(package) if have != (0, 0) else 'none'}. Install a tested version "
                f"(pip install '{package}>={low[0]}.{low[1]},<{high[0]}.{high[1]}')."
            )


# -- KV cache -----------------------------------------------------------------------------

def _update_kv_cache_from_cache(self, k: Tensor, v: Tensor, **kwargs):
    """``_update_kv_cache`` that also finds the cache under ``cache=`` (bound per instance)."""
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs["past_key_values"] = kwargs["cache"]
    return type(self)._update_kv_cache(self, k, v, **kwargs)


@contextmanager
def kv_cache(model) -> Iterator[None]:
    """Within the block, the bridge's attention reads a cache passed as ``cache=``.

    TransformerLens 4.3 reads the cache from ``past_key_values`` while transformers 5 passes
    it as ``cache``; each attention's ``_update_kv_cache`` is wrapped and restored on exit.
    Re-entrant: an inner block on an already patched model changes nothing.
    """
    if installed("transformers") < (5, 0):  # transformers 4 passes past_key_values itself
        yield
        return
    require_tested("KV-cache", "transformer-lens", "transformers")
    with _patched(model, "_update_kv_cache", _update_kv_cache_from_cache, lambda attn: True):
        yield


@contextmanager
def _patched(model, method: str, replacement, applies) -> Iterator[None]:
    """:func:`_patch` for the duration of the block."""
    undo = _patch(model, method, replacement, applies)
    try:
        yield
    finally:
        undo()


def _patch(model, method: str, replacement, applies) -> Callable[[], None]:
    """Bind ``replacement`` as ``method`` on each block's attention where ``applies(attn)`` and
    it is not patched yet; returns the undo. Bound methods, so a deep copy of the model made
    meanwhile calls its own components, not the original's."""
    patched = []
    for block in model.blocks:
        attn = block.attn
        if applies(attn) and method not in vars(attn):
            # into the instance dict: a bridge's __setattr__ forwards a public name (``forward``)
            # to the wrapped Hugging Face module
            vars(attn)[method] = types.MethodType(replacement, attn)
            patched.append(attn)

    def undo() -> None:
        for attn in patched:
            vars(attn).pop(method, None)

    undo.changed = bool(patched)  # False when already patched (a nested attention_hooks)
    return undo


# -- hooks that the bridge declares but does not fire ----------------------------------------

#: Bridge attention classes that rotate q/k inside the bridge without firing the rot hooks.
ROTARY_WITHOUT_HOOKS = ("JointQKVPositionEmbeddingsAttentionBridge",)
#: Hugging Face attention classes that compute scores inside their own module (through the
#: transformers attention interface), which the bridge only wraps.
HF_INTERNAL_ATTENTION = ("OPTAttention", "GPTJAttention")
HOOKED_IMPLEMENTATION = "dualform_hooked"
BRIDGE_ATTR = "_dualform_bridge_attention"  # on a Hugging Face attention: its bridge component


def needs_attention_hooks(model) -> bool:
    """Whether :func:`attention_hooks` changes anything on this model."""
    blocks = getattr(model, "blocks", None)
    if not hasattr(model, "original_model") or blocks is None:  # not a TransformerBridge
        return False
    return any(_rotary_without_hooks(b.attn) or _hf_internal(b.attn)
               or hasattr(b.attn, "_masked_softmax") for b in blocks)


def _rotary_without_hooks(attn) -> bool:
    return type(attn).__name__ in ROTARY_WITHOUT_HOOKS and hasattr(attn, "hook_rot_q")


def _hf_internal(attn) -> bool:
    return type(getattr(attn, "original_component", None)).__name__ in HF_INTERNAL_ATTENTION


@contextmanager
def attention_hooks(model) -> Iterator[None]:
    """Within the block, every attention hook the bridge declares fires, inside the computation.

    Re-entrant; the model is restored on exit (instance methods removed, the Hugging Face
    attention implementation reset). :func:`dualform.load_model` installs it for good on the
    models it builds (:func:`install_attention_hooks`).
    """
    undo = install_attention_hooks(model)
    try:
        yield
    finally:
        undo()


def install_attention_hooks(model) -> Callable[[], None]:
    """Make the declared attention hooks fire; returns the undo (what :func:`attention_hooks`
    calls on exit). :func:`dualform.load_model` keeps them on the models it builds."""
    if not needs_attention_hooks(model):
        return lambda: None
    require_tested("attention-hooks", "transformer-lens", "transformers")
    undos = [_patch(model, "_apply_rotary_pos_emb", _rotate_with_hooks, _rotary_without_hooks),
             _patch(model, "_masked_softmax", _softmax_at_least_fp32,
                    lambda attn: hasattr(attn, "_masked_softmax"))]
    if any(_hf_internal(b.attn) for b in model.blocks):
        undos.append(_hooked_hf_attention(model))
    # The firing probe of dualform.probes (available_short_names) caches, per model, which hooks
    # fire; a change drops that answer on the way in and on the way out (a nested call, which
    # changes nothing, keeps it: a forward per query batch otherwise).
    changed = any(getattr(step, "changed", True) for step in undos)
    if changed:
        forget_firing(model)

    def undo() -> None:
        for step in reversed(undos):
            step()
        if changed:
            forget_firing(model)

    return undo


def _softmax_at_least_fp32(self, attn_scores: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The bridge's softmax "upcast to float32" without *down*casting a float64 model (which
    made its pattern float32-precise, ~1e-8 off the float64 identities)."""
    if dtype is not None and attn_scores.dtype == torch.float64:
        dtype = None
    return type(self)._masked_softmax(self, attn_scores, dtype=dtype)


def _rotate_with_hooks(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor):
    """The bridge's own rotary, then ``hook_rot_q``/``hook_rot_k`` (which convert the layout)."""
    q, k = type(self)._apply_rotary_pos_emb(self, q, k, cos, sin)
    return self.hook_rot_q(q), self.hook_rot_k(k)


def hooked_attention_forward(module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, scaling: float, dropout: float = 0.0,
                             **kwargs) -> tuple[Tensor, None]:
    """Eager attention (``softmax(scaling · q kᵀ + mask) v``) that fires the bridge's hooks.

    ``query``/``key``/``value`` are ``[batch, head, pos, d_head]`` after the model's rotary.
    Computed in at least float32, as the models' own eager code does. Returns no weights, so the
    bridge does not fire ``hook_pattern`` a second time after the fact.
    """
    attn = vars(module)[BRIDGE_ATTR]
    dtype = torch.promote_types(query.dtype, torch.float32)
    if hasattr(attn, "hook_rot_q"):
        query, key = attn.hook_rot_q(query), attn.hook_rot_k(key)  # the hooks convert the layout
    n_rep = query.shape[1] // key.shape[1]
    key, value = (t.repeat_interleave(n_rep, dim=1) for t in (key, value))
    scores = torch.matmul(query.to(dtype), key.to(dtype).transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]].to(dtype)
    scores = attn.hook_attn_scores(scores)
    pattern = attn.hook_pattern(torch.softmax(scores, dim=-1).to(value.dtype))
    pattern = torch.nn.functional.dropout(pattern, p=dropout, training=module.training)
    return torch.matmul(pattern, value).transpose(1, 2).contiguous(), None


def _hooked_hf_attention(model) -> Callable[[], None]:
    """Route the wrapped Hugging Face attention through :func:`hooked_attention_forward`;
    returns the undo."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(HOOKED_IMPLEMENTATION, hooked_attention_forward)
    AttentionMaskInterface.register(HOOKED_IMPLEMENTATION, eager_mask)
    configs = list({id(c): c for c in _configs(model)}.values())
    before = [(c, c._attn_implementation) for c in configs
              if c._attn_implementation != HOOKED_IMPLEMENTATION]
    linked = []
    for block in model.blocks:
        hf_attn = block.attn.original_component
        if _hf_internal(block.attn) and BRIDGE_ATTR not in vars(hf_attn):
            vars(hf_attn)[BRIDGE_ATTR] = block.attn  # not a submodule: kept out of _modules
            linked.append(hf_attn)
    for config, _ in before:
        config._attn_implementation = HOOKED_IMPLEMENTATION

    def undo() -> None:
        for config, name in before:
            config._attn_implementation = name
        for hf_attn in linked:
            vars(hf_attn).pop(BRIDGE_ATTR, None)

    return undo


def _configs(model) -> list:
    """The Hugging Face config objects the attention modules read (one per module)."""
    configs = [model.original_model.config]
    for block in model.blocks:
        config = getattr(block.attn.original_component, "config", None)
        if config is not None:
            configs.append(config)
    return configs


# -- padding ------------------------------------------------------------------------------

def finite_padding_patterns(model, mask: Tensor):
    """Context manager zeroing the NaN pattern rows of fully masked (left-padding) queries.

    The TransformerLens 4 bridge gives NaN attention rows for padded query positions; the NaN
    then reaches real tokens through ``0 · NaN`` in the next layer. Zeroing those rows changes
    nothing at real positions (their keys are masked anyway). A no-op without padding.
    """
    if bool(mask.all()):
        return nullcontext()
    require_tested("padding-NaN", "transformer-lens")
    from dualform.probes import hook_name, hooks, n_layers

    names = [hook_name("pattern", layer) for layer in range(n_layers(model))]
    hook_dict = model.hook_dict
    fix = lambda pattern, hook: pattern.nan_to_num(0.0)  # noqa: E731
    return hooks(model, [(name, fix) for name in names if name in hook_dict])


# -- copying and saving -------------------------------------------------------------------

def deepcopy_module(model: torch.nn.Module, *, share: Iterable[Tensor] = ()) -> torch.nn.Module:
    """``copy.deepcopy`` that also works after a forward pass with autograd on.

    Tensors in ``share`` are not copied (the copy holds the same tensors), nor is the
    tokenizer. Some bridge
    components keep the last attention pattern as a plain attribute; with autograd on it is not
    a graph leaf and ``deepcopy`` refuses it, so such tensors are copied detached. TransformerLens
    blocks wire forward hooks bound to their own hook points on their first forward (e.g.
    Granite's scaled ``hook_attn_out``); a copy would keep firing the original's, so they are
    torn down first and each block wires itself again on its next forward.
    """
    for module in model.modules():  # TL blocks re-wire their capture hooks on the next forward
        if getattr(module, "_capture_hooks_wired", False) and hasattr(module, "_teardown_capture_hooks"):
            module._teardown_capture_hooks()
    memo: dict[int, object] = {id(t): t for t in share}
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:  # shared, never written (a copy costs ~0.1 s: tokenizers pickles it)
        memo[id(tokenizer)] = tokenizer
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, Tensor) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def drop_quantization_config(model) -> None:
    """Forget the GGUF quantiser of a model whose weights are plain floats now, so that
    ``save_pretrained`` writes them (transformers keeps it as a config attribute)."""
    require_tested("dequantisation", "transformers")
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None


def hf_module(obj) -> object:
    """The Python module a Hugging Face object's class is defined in (its modeling file)."""
    return sys.modules[type(obj).__module__]
