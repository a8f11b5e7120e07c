"""Models: the embedded SmolLM2-135M, seeded tiny test models, Hugging Face ids and directories.

    load.py      load_model (GGUF → cached safetensors, tiny models, HF ids), devices, dtypes
    features.py  attention features per model (GQA, rotary, ALiBi, soft-cap, fused QKV layout), refusals
    compat.py    every shim over TransformerLens / transformers internals, version-guarded, reversible
"""

from dualform.models.load import (
    DEFAULT_MODEL,
    ModelLoadError,
    load_model,
    resolve_device,
    resolve_dtype,
)

__all__ = ["DEFAULT_MODEL", "ModelLoadError", "load_model", "resolve_device", "resolve_dtype"]
