"""Execute notebooks/*.ipynb and store them with their outputs, static PNGs included.

Usage: python analyses/run_notebooks.py [NAME ...]      (or: make notebooks)

GitHub and nbviewer do not draw plotly's JSON output, so every figure is also stored as a PNG
(plotly's ``plotly_mimetype+png`` renderer: kaleido through the local Chromium, offline). Each
notebook's metadata records the SHA-256 of its code cells (``dualform.code_sha256``);
``tests/test_notebooks.py`` checks that the stored outputs belong to the current code, so a code
change without a rerun of this script fails the tests. Runs offline on the embedded model; the
kernel's temporary files go to a directory removed afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TIMEOUT_S = 1800  # per cell (a loaded shared machine is slow)


def code_sha256(nb) -> str:
    """SHA-256 of the notebook's code cells (sources only, in order)."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode("utf-8") + b"\0")
    return digest.hexdigest()


def execute(path: Path, *, png: bool = True) -> float:
    """Run ``path`` top to bottom in a fresh kernel, store it with outputs; returns seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="dualform-nb-") as tmp:
        env = {"TMPDIR": tmp, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # no weight-loading bars in the outputs
        if png:
            env["PLOTLY_RENDERER"] = "plotly_mimetype+png"
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            start = time.perf_counter()
            NotebookClient(nb, kernel_name="python3", timeout=TIMEOUT_S,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            seconds = time.perf_counter() - start
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    nb.metadata["dualform"] = {"code_sha256": code_sha256(nb)}
    nbformat.write(nb, path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--no-png", action="store_true", help="skip the static images")
    args = parser.parse_args()
    if not args.no_png:
        from dualform.viz.report import find_chromium

        browser = os.environ.get("BROWSER_PATH") or find_chromium()
        if browser is None:
            sys.exit("the PNGs need Chromium (kaleido renders through it): apt-get install -y chromium")
        os.environ["BROWSER_PATH"] = browser
    paths = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names or p.name in args.names]
    for path in paths:
        print(f"{path.name}: {execute(path, png=not args.no_png):.0f} s", flush=True)


if __name__ == "__main__":
    main()
