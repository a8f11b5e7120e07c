"""The model card that ``dualform info`` prints, computed once per model and kept as JSON.

Computing a card needs the model (torch, TransformerLens, transformers: seconds to import);
reading a kept one needs none of them, so this module imports only the standard library and
:mod:`dualform.infra.io`, and the heavy modules inside :func:`compute_card` / :func:`model_card`.

A card is kept beside the model's cached weights (the embedded model) or in
``cache_dir()/cards/`` under a hash of the model's source (tiny models, Hugging Face ids and
directories), together with its key: what the model is (name; for a directory its path and the
sizes and mtimes of its config and weight files), the versions of dualform, torch,
transformers and TransformerLens (from their metadata, not imported) and a hash of the dualform
code that computes a card. A kept card whose key differs, or a damaged card file, is ignored and
computed again.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from dualform.infra.io import read_json, write_json_atomic
from dualform.infra.versions import package_versions
from dualform.models.names import cache_dir, embedded_cache, source_kind

CARD_FILE = "dualform-card.json"
#: Files of a model directory whose change changes the card (config and weights).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
#: The dualform modules a card is computed with: a change to one of them recomputes the cards.
CODE = ("models/card.py", "models/load.py", "models/features.py", "models/compat/__init__.py",
        "probes.py")
HOOK_LISTS = ("short_hooks", "layer_hooks", "other_hooks")


def card_source(name: str) -> str | None:
    """What ``name`` loads, as a string: ``"tiny:tiny-gpt2"``, ``"embedded:smollm2-135m"``,
    ``"dir:/abs/path"``, ``"hub:gpt2"``; ``None`` for a name ``load_model`` refuses."""
    kind = source_kind(name)
    if kind is None:
        return None
    return f"dir:{Path(name).resolve()}" if kind == "dir" else f"{kind}:{name}"


def card_path(name: str) -> Path | None:
    """Where the card of ``name`` is kept (``None`` for a name ``load_model`` refuses)."""
    source = card_source(name)
    if source is None:
        return None
    if source_kind(name) == "embedded":
        return embedded_cache(name) / CARD_FILE
    readable = Path(source.split(":", 1)[1]).name or "model"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", readable).lstrip(".")[:40]
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "cards" / f"{slug}-{digest}.json"


def card_key(name: str) -> dict | None:
    """Everything a card depends on (JSON types only, so it compares equal after a round trip)."""
    source = card_source(name)
    if source is None:
        return None
    kind = source_kind(name)
    files = model_files(embedded_cache(name) if kind == "embedded" else Path(name)) \
        if kind in ("embedded", "dir") else {}
    return {"source": source, "files": files, "versions": package_versions(),
            "code": code_hash()}


def model_files(directory: Path) -> dict[str, list[int]]:
    """``{file: [size, mtime_ns]}`` of the config and weight files of a model directory."""
    found = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file() and (path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES
                               or path.name.endswith(".index.json")):
            stat = path.stat()
            found[path.name] = [stat.st_size, stat.st_mtime_ns]
    return found


def code_hash() -> str:
    """SHA-256 of the dualform modules that compute a card (:data:`CODE`)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for rel in CODE:
        digest.update(rel.encode() + b"\0" + (package / rel).read_bytes())
    return digest.hexdigest()


def compute_card(bridge) -> dict:
    """The card of a loaded ``TransformerBridge``: ``rows`` (property, value) of the table, the
    short hook names, the hooks of layer 0, the other hooks and the number of layers."""
    from dualform.models.features import attention_features
    from dualform.probes import available_short_names, head_counts

    cfg = bridge.cfg
    n_heads, n_kv = head_counts(bridge)
    rows = [
        ("architecture", type(bridge.original_model).__name__),
        ("layers", cfg.n_layers), ("heads", n_heads), ("KV heads", n_kv),
        ("d_model", cfg.d_model), ("d_head", cfg.d_head), ("context length", cfg.n_ctx),
        ("positional embedding", cfg.positional_embedding_type),
        ("attention features", attention_features(bridge).summary()),
        ("parameters", f"{sum(p.numel() for p in bridge.parameters()):,}"),
    ]
    return {
        "rows": [[key, str(value)] for key, value in rows],
        "n_layers": int(cfg.n_layers),
        "short_hooks": list(available_short_names(bridge)),
        "layer_hooks": sorted(h for h in bridge.hook_dict if h.startswith("blocks.0.")),
        "other_hooks": sorted(h for h in bridge.hook_dict if not h.startswith("blocks.")),
    }


def is_card(card: object) -> bool:
    """Whether ``card`` has the layout :func:`compute_card` returns."""

    def strings(values: object) -> bool:
        return isinstance(values, list) and all(isinstance(v, str) for v in values)

    return (isinstance(card, dict)
            and isinstance(card.get("rows"), list)
            and all(strings(row) and len(row) == 2 for row in card["rows"])
            and type(card.get("n_layers")) is int
            and all(strings(card.get(k)) for k in HOOK_LISTS))


def read_card(name: str) -> dict | None:
    """The kept card of ``name`` if its key is today's, else ``None`` (also for a missing,
    damaged or unreadable card file). Imports neither torch nor TransformerLens."""
    path = card_path(name)
    if path is None:
        return None
    try:
        stored = read_json(path)
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: compute it again
        return None
    if not isinstance(stored, dict) or stored.get("key") != card_key(name):
        return None
    return stored["card"] if is_card(stored.get("card")) else None


def model_card(name: str, *, refresh: bool = False) -> dict:
    """The card of ``name``: the kept one when it is current (and ``refresh`` is false), else
    loaded, computed and kept. A card that cannot be written is still returned."""
    card = None if refresh else read_card(name)
    if card is not None:
        return card
    from dualform.models.load import load_model

    card = compute_card(load_model(name))
    path, key = card_path(name), card_key(name)  # after loading: the weights' cache exists now
    if path is not None and key is not None:
        try:
            write_json_atomic(path, {"key": key, "card": card})
        except OSError:  # a read-only or full cache: the card is only a shortcut
            pass
    return card
