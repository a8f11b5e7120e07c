"""An exclusive lock on a directory (``fcntl.flock`` on a lock file) and cleanup of the
temporaries an interrupted writer leaves behind.

The kernel drops a ``flock`` when its process dies, however it dies (``kill -9`` included), so a
stale lock file never blocks: the next run takes the lock at once. The lock file keeps the
holder's pid only to name it in the message of a second run.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dualform.errors import DualformError

LOCK_NAME = ".dualform.lock"
#: What ``tempfile.mkstemp(prefix=".results.json.")`` leaves: ``.results.json.x1y2z3ab``.
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9]+\.[a-z0-9_]{8}$")


class DirectoryBusyError(DualformError):
    """Another process holds the directory's lock."""


@contextmanager
def locked(directory: str | Path, *, wait_s: float = 0.0, what: str = "dualform run") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if missing) for the ``with`` block.

    ``wait_s`` > 0 waits that long for another holder to finish; then (or at once with 0) a
    busy directory raises :class:`DirectoryBusyError` naming the holder's pid.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DirectoryBusyError(
                        f"{directory} is in use by another {what} ({_holder(path)}). Wait for it "
                        "to finish, or write to another directory (--out)."
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield directory
    finally:
        handle.close()  # releases the lock


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def remove_temporaries(directory: str | Path, dir_prefixes: tuple[str, ...] = ()) -> list[Path]:
    """Delete what an interrupted atomic write left in ``directory``: hidden temporary files
    (``.results.json.x1y2z3ab``) and temporary directories named ``prefix + 8 characters``
    (``mkdtemp(prefix=".smollm2-135m-")``). Call only while holding the directory's lock.
    Returns what was removed."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if any(entry.name.startswith(p) and len(entry.name) == len(p) + 8 for p in dir_prefixes):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        elif _TEMP_FILE.match(entry.name) and entry.name != LOCK_NAME:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
