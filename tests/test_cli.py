"""The command line: a sweep from the shell, and clear errors for bad options."""

import json

from typer.testing import CliRunner

from dualform.cli import app

runner = CliRunner()
SMALL = ["--tasks", "afinn-sentiment", "--shots", "4", "--n-test", "4", "--n-validation", "4",
         "--seeds", "1", "--demo-seeds", "1", "--lr-grid", "0.1,0.01"]


def test_sweep_command_writes_jobs_and_results(tmp_path):
    result = runner.invoke(app, ["sweep", "--models", "tiny-llama", *SMALL, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "tiny-llama" / "results.json").read_text())
    assert results["tasks"]["afinn-sentiment"]["seeds"][0]["selection"]["lr"] in (0.1, 0.01)
    assert len(list((tmp_path / "jobs").glob("*.json"))) == 4  # 1 seed, 2 rates, 1 test
    assert "wrote" in result.output and "failed job" not in result.output
    report = runner.invoke(app, ["report", str(tmp_path / "tiny-llama")])  # run_dai's layout
    assert report.exit_code == 0, report.output
    assert (tmp_path / "tiny-llama" / "report.html").stat().st_size > 10_000


def test_bad_dtype_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["reproduce", "dai", "--model", "tiny-llama", *SMALL,
                                 "--dtype", "int4", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Unknown dtype 'int4'" in result.output


def test_unknown_executor_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["sweep", "--models", "tiny-llama", *SMALL, "--executor", "slurm",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "local' or 'ray" in result.output


def test_cli_constants_match_their_homes():
    """cli_options.py repeats two defaults so that building the command line imports no torch."""
    from dualform.cli import DEFAULT_MODEL, DEFAULT_TASKS
    from dualform.experiments.dai import config
    from dualform.models import load

    assert DEFAULT_MODEL == load.DEFAULT_MODEL
    assert DEFAULT_TASKS == config.DEFAULT_TASKS


def test_help_lists_every_command_with_examples_and_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from dualform.cli import app;"
            "r = CliRunner().invoke(app, ['--help']); print(r.output);"
            "print('HEAVY', sorted(m for m in ('torch', 'transformer_lens', 'plotly') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "COLUMNS": "80"}, check=True).stdout
    assert "HEAVY []" in out
    for command in ("info", "walkthrough", "reproduce", "sweep", "report", "bench"):
        assert command in out.split("Commands")[-1]
    assert "Examples" in out and "``" not in out
    for sub in (["reproduce", "dai"], ["sweep"], ["walkthrough"], ["bench"], ["report"]):
        text = runner.invoke(app, [*sub, "--help"], env={"COLUMNS": "80"}).output
        assert "Example" in text and "``" not in text and "…" not in text, text
    assert "[default: auto]" in runner.invoke(app, ["reproduce", "dai", "--help"]).output


def _cells_whole(text: str, cells) -> None:
    flat = "".join(text.split())  # a folded cell is whole once the layout's spaces go
    for cell in cells:
        assert "".join(str(cell).split()) in flat, cell
    assert "…" not in text


def test_dai_table_never_truncates_at_80_columns_or_in_a_pipe():
    import io

    from rich.console import Console
    from test_viz import fake_results

    from dualform.viz.tables import COLUMNS, dai_rows, print_dai_table

    results = fake_results(("afinn-sentiment", "vader-valence", "country-region"))
    for width in (80, 50):
        buffer = io.StringIO()
        print_dai_table(results, Console(file=buffer, width=width))  # a file: not a terminal
        text = buffer.getvalue()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "…" not in text
        assert "(tiny-llama)" not in text and "— tiny-llama" in text  # the model is in the titles
        if width == 80:  # every column fits a group of its own: no cell wraps
            rows = dai_rows(results, short=True)
            _cells_whole(text, [label for label, _ in rows])
            _cells_whole(text, [row[k] for _, row in rows for _, k in COLUMNS])


def test_walkthrough_takes_task_and_shots_and_explains_columns(tmp_path):
    out = tmp_path / "w.json"
    result = runner.invoke(app, ["walkthrough", "--model", "tiny-llama", "--task", "country-region",
                                 "--shots", "3", "--out", str(out)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["task"] == "country-region" and data["shots"] == 3
    assert max(data["identity_error_full"]) < 1e-10  # the relaxed identity, float64
    for column in ("err (all)", "err (demo)", "cos(ΔW_ICL q, Δz_FT)"):
        assert f"{column}:" in result.output  # each column has its legend line
    assert "Δz_FT=z_FT−z_ZSL" in "".join(result.output.split())
    assert "…" not in result.output
