"""Short reprs for result objects, so that ending a notebook cell with one shows a summary.

Tensors and arrays print as ``float32[30, 9, 64]``, modules as ``<TransformerBridge>``, runs of
consecutive integers as ``0..29``, and long lists, dicts and strings by their length.
"""

from __future__ import annotations

import dataclasses

import torch

WIDTH = 40  # the most characters one field's summary takes
NESTED = 100  # a nested result object (dataclass, NamedTuple) shows its own repr up to this


def brief(value: object, width: int = WIDTH) -> str:
    """A one-glance summary of ``value`` in at most about ``width`` characters."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # torch tensors, numpy arrays
        return f"{brief_dtype(value)}[{', '.join(str(int(n)) for n in value.shape)}]"
    if isinstance(value, torch.nn.Module):
        return f"<{type(value).__name__}>"
    if isinstance(value, slice):
        return f"{value.start}:{value.stop}"
    if isinstance(value, str):
        return repr(value) if len(value) <= width else repr(value[: width - 1] + "…")
    text = repr(value)
    if dataclasses.is_dataclass(value) or hasattr(value, "_fields"):
        return text if len(text) <= NESTED else f"<{type(value).__name__}>"
    if len(text) <= width:
        return text
    if isinstance(value, (list, tuple, range)) and _consecutive_ints(value):
        return f"{value[0]}..{value[-1]}"
    if isinstance(value, (list, tuple, dict, set)):
        return f"{type(value).__name__}[{len(value)}]"
    return f"<{type(value).__name__}>"


def brief_dtype(value) -> str:
    """``float32`` for a float32 tensor or array (no ``torch.`` prefix)."""
    return str(value.dtype).removeprefix("torch.")


def _consecutive_ints(values) -> bool:
    items = list(values)
    return bool(items) and all(isinstance(x, int) for x in items) and items == list(
        range(items[0], items[0] + len(items))
    )


def compact_repr(obj: object) -> str:
    """``ClassName(field=brief(value), …)`` for a dataclass or a NamedTuple (``_`` fields left out).

    Use as ``__repr__ = compact_repr`` in the class body.
    """
    if dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj) if f.repr]
    else:
        names = list(getattr(obj, "_fields", ()))
    parts = ", ".join(f"{n}={brief(getattr(obj, n))}" for n in names if not n.startswith("_"))
    return f"{type(obj).__name__}({parts})"
