"""Every notebook in notebooks/ runs top to bottom (nbclient, the embedded model, offline), cleanly,
and is stored with the outputs of its current code (static PNGs included, for GitHub)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"
REGENERATE = "python analyses/run_notebooks.py (make notebooks)"
#: What each notebook must show besides running: (mime type or text, minimum count).
EXPECTED = {
    "01_dual_form.ipynb": [(PLOTLY, 5), ("text/html", 1), ("relaxed: max", 1)],
    "02_icl_vs_finetuning.ipynb": [(PLOTLY, 4), ("text/markdown", 1), ("report.html", 1)],
    "03_momentum_attention.ipynb": [(PLOTLY, 3)],
    "04_regression_gd.ipynb": [(PLOTLY, 2), ("GD step(s)", 3)],
}


def _warnings(outputs: list) -> list[str]:
    return [o["text"] for o in outputs if o.get("output_type") == "stream"
            and o.get("name") == "stderr" and "warn" in o.get("text", "").lower()]


def _run(nb, cwd: Path) -> None:
    # "python3" resolves to this interpreter: jupyter_client swaps a kernelspec's bare
    # "python" for sys.executable, and ipykernel provides the spec when none is installed.
    NotebookClient(nb, kernel_name="python3", timeout=1800,  # a guard against hangs only
                   resources={"metadata": {"path": str(cwd)}}).execute()


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _count(outputs: list, what: str) -> int:
    if "/" in what and " " not in what:
        return sum(what in o.get("data", {}) for o in outputs)
    return sum(o.get("text", "").count(what) for o in outputs if o.get("output_type") == "stream")


def test_there_are_the_four_notebooks():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_with_the_outputs_of_its_current_code(path, analysis):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    recorded = nb.metadata.get("dualform", {}).get("code_sha256")
    current = analysis("run_notebooks").code_sha256(nb)
    assert recorded == current, f"{path.name}: outputs are stale; run {REGENERATE}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # one clean run
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not _warnings(outputs), _warnings(outputs)
    figures = [o["data"] for o in outputs if PLOTLY in o.get("data", {})]
    assert figures and all("image/png" in d for d in figures)  # drawn on GitHub too


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the kernel's temporary files land here
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    nb = nbformat.read(path, as_version=4)
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        cell.outputs, cell.execution_count = [], None  # run from the source, not the stored run
    _run(nb, tmp_path)  # raises CellExecutionError (with the traceback) if any cell fails
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not _warnings(outputs), _warnings(outputs)
    assert not list(tmp.iterdir()), f"{path.name} left {[p.name for p in tmp.iterdir()]}"
    for what, minimum in EXPECTED[path.name]:
        assert _count(outputs, what) >= minimum, f"{path.name}: expected {minimum}× {what!r}"


def test_kernel_is_this_interpreter(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    _run(nb, tmp_path)
    printed = _outputs(nb)[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()
