"""Atomic, resumable result files: a run killed at any point leaves either the old or the new file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dualform.errors import DualformError


class ResultWriteError(DualformError, OSError):
    """A result could not be written (e.g. the disk is full); the previous file is intact."""


class ResultsFileError(DualformError, ValueError):
    """A results file that is not valid JSON (truncated, empty, binary); names file and line."""


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ResultWriteError(
            f"Could not write {path} ({err.strerror or err}); the previous version is unchanged. "
            "Free disk space and rerun: finished parts are kept and the run resumes."
        ) from err
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Strict JSON (NaN/inf become ``null``), written atomically."""
    return write_text_atomic(path, json.dumps(_finite(data), indent=2, default=_jsonable, allow_nan=False))


def as_stored(data: Any) -> Any:
    """``data`` as it reads back from :func:`write_json_atomic` (for comparisons on resume)."""
    return json.loads(json.dumps(_finite(data), default=_jsonable, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in ``path`` (``default`` if there is no such file); a damaged file raises
    :class:`ResultsFileError` naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return default
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        problem = f"line {line}: not UTF-8 text (byte {err.start})"
    except json.JSONDecodeError as err:
        problem = f"line {err.lineno}, column {err.colno}: {err.msg}" if raw.strip() else "empty file"
    raise ResultsFileError(
        f"{path}, {problem}; it is not valid JSON (truncated or damaged?). Move it away, or rerun "
        "with --overwrite to set it aside (renamed, not deleted) and start afresh."
    )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")
