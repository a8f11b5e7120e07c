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
