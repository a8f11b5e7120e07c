"""Results directories that never lose work.

* :func:`results_directory` creates the directory and checks that it is writable *before* any
  work, holds its exclusive lock for the run (a second run into it stops with a clear message)
  and removes the temporaries an interrupted write left behind.
* :func:`load_results` reads what is there and accepts it only if it was made with the same
  settings: entries of the same settings are kept (a run with new tasks adds them beside the
  old ones); other settings raise :class:`SettingsMismatchError` saying what differs and how to
  proceed. ``overwrite=True`` renames the old file aside (never deletes it) and starts afresh.
* :func:`record_entry` stores one entry together with the settings that produced it.

Layout: ``{"config": {...}, "settings": {entry: {...}}, "<entries>": {entry: {...}}, ...}``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dualform.errors import DualformError
from dualform.infra.io import as_stored, read_json
from dualform.infra.lock import locked, remove_temporaries

#: Settings that change how a result is computed but not what it is (up to float rounding).
EXECUTION_ONLY = ("device", "device_map", "batch_size", "reuse_prefix", "workers")


class OutputDirError(DualformError, OSError):
    """The output directory can't be created or written to."""


class SettingsMismatchError(DualformError, ValueError):
    """The results on disk were made with other settings than this run's."""


def prepare_output_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and check that a file can be written there (call before any work)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.tmp.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), out)
        raise OutputDirError(
            f"Can't use {out} as the output directory: {blocker} is a file, not a directory. "
            "Choose another --out."
        ) from err
    except OSError as err:
        raise OutputDirError(
            f"Can't write to the output directory {out} ({err.strerror or err}). "
            "Choose another --out or fix its permissions / free disk space."
        ) from err
    return out


@contextmanager
def results_directory(out_dir: str | Path, *, wait_s: float = 0.0,
                      subdirs: Sequence[str] = ()) -> Iterator[Path]:
    """Writable ``out_dir``, locked for the block, with orphaned temporaries removed (also in
    ``subdirs``, e.g. a sweep's ``jobs``)."""
    out = prepare_output_dir(out_dir)
    with locked(out, wait_s=wait_s):
        for directory in (out, *(out / s for s in subdirs)):
            remove_temporaries(directory)
        yield out


def comparable(settings: dict, ignore: Sequence[str]) -> dict:
    """The settings that decide what an entry is (``ignore`` dropped), as stored in JSON."""
    return {k: v for k, v in as_stored(settings).items() if k not in ignore}


def differences(old: dict, new: dict) -> list[str]:
    """``["shots: 32 on disk, 16 in this run", ...]`` for every key whose value differs."""
    keys = list(dict.fromkeys([*old, *new]))
    return [f"{k}: {old.get(k, '(unset)')!r} on disk, {new.get(k, '(unset)')!r} in this run"
            for k in keys if old.get(k) != new.get(k)]


def move_aside(path: Path) -> Path | None:
    """Rename ``path`` to ``<stem>.replaced-<time>[-n]<suffix>`` beside it; never deletes."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        target = path.with_name(f"{path.stem}.replaced-{stamp}{f'-{n}' if n else ''}{path.suffix}")
        if not target.exists():
            os.replace(path, target)
            return target
    raise OutputDirError(f"Could not find a free name to move {path} aside.")


def load_results(path: str | Path, config: dict, *, entries: str = "tasks",
                 ignore: Sequence[str] = ("tasks", *EXECUTION_ONLY),
                 overwrite: bool = False) -> dict:
    """The results at ``path`` that a run with ``config`` may extend, or fresh ones.

    Each stored entry's settings (``results["settings"][name]``, else the file's ``config``)
    must equal ``config`` except for the keys in ``ignore``; otherwise
    :class:`SettingsMismatchError` lists the differences. ``overwrite=True`` first moves an
    existing file aside. The returned ``config`` lists the old entries' names then the new ones.
    """
    path = Path(path)
    if overwrite:
        move_aside(path)
    results = read_json(path) or {}
    stored = results.get(entries) or {}
    results.setdefault("settings", {})
    new = comparable(config, ignore)
    for name in stored:
        old = comparable(results["settings"].get(name) or results.get("config") or {}, ignore)
        if old != new:
            raise SettingsMismatchError(
                f"{path} holds results made with other settings ({name!r}: "
                + "; ".join(differences(old, new)) + "). Nothing was changed. Write to another "
                "directory (--out) or pass --overwrite to move the old file aside (it is renamed, "
                "not deleted) and start afresh."
            )
    merged = dict(config)
    if entries in config:  # e.g. the task list: the old entries' names, then the new ones
        merged[entries] = list(dict.fromkeys([*stored, *config[entries]]))
    results["config"] = merged
    results[entries] = stored
    return results


def entry_settings(config: dict, per_entry: Sequence[str] = ("tasks",)) -> dict:
    """The settings recorded beside an entry: ``config`` less the ``per_entry`` keys."""
    return {k: v for k, v in config.items() if k not in per_entry}


def record_entry(results: dict, name: str, entry: dict, config: dict, *,
                 entries: str = "tasks", per_entry: Sequence[str] = ("tasks",)) -> None:
    """``results[entries][name] = entry``, with ``config`` (less ``per_entry`` keys) recorded
    as the settings that produced it (a typed results object records
    :func:`entry_settings` itself)."""
    results.setdefault(entries, {})[name] = entry
    results.setdefault("settings", {})[name] = entry_settings(config, per_entry)


def pin_settings(path: str | Path, settings: dict, *, ignore: Sequence[str] = EXECUTION_ONLY,
                 overwrite: bool = False, also_move: Sequence[Path] = ()) -> None:
    """Record ``settings`` in ``path`` (e.g. a sweep's ``sweep.json``), or check them against
    those recorded: other settings raise :class:`SettingsMismatchError`, unless ``overwrite``
    moves ``path`` and ``also_move`` (the work made with the old settings) aside first."""
    from dualform.infra.io import write_json_atomic

    path = Path(path)
    if overwrite and path.exists():
        for other in (path, *also_move):
            move_aside(other)
    new = comparable(settings, ignore)
    stored = read_json(path)
    if stored is not None and comparable(stored.get("settings", {}), ignore) != new:
        old = comparable(stored.get("settings", {}), ignore)
        raise SettingsMismatchError(
            f"{path.parent} holds work made with other settings ("
            + "; ".join(differences(old, new)) + "). Nothing was changed. Write to another "
            "directory (--out) or pass --overwrite to move the old work aside (renamed, not "
            "deleted) and start afresh."
        )
    if stored is None:
        write_json_atomic(path, {"settings": settings})
