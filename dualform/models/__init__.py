"""Models: the embedded SmolLM2-135M, seeded tiny test models, Hugging Face ids and directories.

    load.py      load_model (GGUF → cached safetensors, tiny models, HF ids), devices, dtypes
    names.py     model names and where their files live (cache directory), without torch
    card.py      the model card of ``dualform info``, computed once and kept as JSON
    features.py  attention features per model (GQA, rotary, ALiBi, soft-cap, fused QKV layout), refusals
    compat/      every shim over TransformerLens / transformers internals, version-guarded, reversible
    cpu_matmul.py  frozen float32 CPU linears through oneDNN on AVX-512 CPUs, reversible

The names below are imported lazily, so ``dualform.models.names`` and ``dualform.models.card``
load without torch.
"""

from __future__ import annotations

import importlib

__all__ = ["DEFAULT_MODEL", "ModelLoadError", "load_model", "resolve_device", "resolve_dtype"]


def __getattr__(name: str):
    if name in __all__:
        value = getattr(importlib.import_module("dualform.models.load"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dualform.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
