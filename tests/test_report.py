"""report.html: self-contained, complete, and drawn by a real (headless Chromium) browser."""

from __future__ import annotations

import os
import re
import subprocess

import plotly.graph_objects as go
import pytest
from test_viz import fake_results

from dualform.experiments.dai.attention import ATTENTION_NAME, record_attention
from dualform.infra.io import read_json, write_json_atomic
from dualform.viz.figures import figures_from_results
from dualform.viz.report import find_chromium, write_report
from dualform.viz.tables import COLUMNS, dai_rows

INSTALL = "apt-get install -y chromium"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-software-rasterizer",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--disable-dev-shm-usage",
)
N_ATTENTION_FIGURES = 3  # last-token attention, demo mass map, ΔW spectra


def _extra_dirs(root):
    """A regression dir (JSON + one plotly HTML + its PNG + a PNG) and a momentum dir."""
    reg = root / "regression"
    reg.mkdir()
    write_json_atomic(reg / "results.json", {"summary": [{"steps": 1, "gd": 0.2, "lsa": 0.21}],
                                             "targets": {"gd_1step_loss": {"met": True}}})
    go.Figure(go.Scatter(y=[3, 1, 2], name="lsa")).write_html(reg / "curves.html")
    (reg / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\nnot-drawn-twice")
    (reg / "weights.png").write_bytes(b"\x89PNG\r\n\x1a\nfake-weights")
    mom = root / "momentum"
    mom.mkdir()
    write_json_atomic(mom / "results.json", {"verdict": {"text": "momentum-verdict-text"}})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    results = fake_results(("afinn-sentiment", "vader-valence"))
    results.save(root / "dai" / "results.json")
    record_attention(root / "dai", results)  # what run_dai does at the end of a run
    _extra_dirs(root)
    path = write_report(root / "dai")
    return path, results


def test_report_is_self_contained(report):
    path, _ = report
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", text)  # every script inline
    markup = re.sub(r"<script[^>]*>.*?</script>", "", text, flags=re.S)  # HTML outside scripts
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)  # nothing from the network
    assert "<link" not in markup and "<iframe" not in markup
    assert not re.search(r"""(from|import\()\s*["'`]https?://""", text)  # no ES-module imports
    assert "unpkg.com" not in text  # not circuitsvis' CDN rendering
    assert text.count('<script type="application/gzip+base64">') == 2  # plotly.js and circuitsvis, once
    assert path.stat().st_size < 4_000_000
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # atomic


def test_report_has_config_tables_and_every_figure(report):
    path, results = report
    text = path.read_text(encoding="utf-8")
    for label, _ in dai_rows(results):
        assert label in text
    assert all(header in text for header, _ in COLUMNS)
    assert "validation examples per task" in text and "learning rates tried" in text  # config
    assert "<th>package</th>" in text and "selection.lr_val_acc" not in text  # human tables
    assert "FT validation accuracy" in text and "0.1 (chosen)" in text
    assert text.count("<figure>") == text.count("<figcaption>")  # every figure captioned
    n_figures = len(figures_from_results(results)) + N_ATTENTION_FIGURES + 1  # + curves.html
    assert text.count('class="plotly-graph-div') == n_figures
    assert text.count("CircuitsVis.AttentionPatterns") == 3
    assert "momentum-verdict-text" in text and "gd 1step loss" in text  # other results as tables
    assert "data:image/png;base64," in text and "weights.png" in text
    assert "not-drawn-twice" not in text and "curves.png" not in text  # HTML figure redrawn instead
    assert read_json(path.parent / ATTENTION_NAME)["key"]["task"] == "afinn-sentiment"


def need_chromium(purpose: str) -> str:
    """The Chromium executable; skips only when ``make test`` could not install it (it says why
    in ``DUALFORM_NO_CHROMIUM``), fails otherwise."""
    chromium = find_chromium()
    if chromium is None:
        reason = os.environ.get("DUALFORM_NO_CHROMIUM", "").strip()
        if reason:
            pytest.skip(f"{purpose} needs Chromium: {reason}")
        pytest.fail(f"Chromium is needed {purpose}: {INSTALL} (make test installs it)")
    return chromium


def _dump_dom(path, tmp_path) -> str:
    chromium = need_chromium("to check that report.html draws")
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom",
           path.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _segments(dom: str, marker: str) -> list[str]:
    starts = [m.start() for m in re.finditer(marker, dom)]
    return [dom[s:e] for s, e in zip(starts, [*starts[1:], len(dom)], strict=True)]


def test_report_draws_in_headless_chromium(report, tmp_path):
    path, results = report
    dom = _dump_dom(path, tmp_path)
    figures = _segments(dom, r'class="plotly-graph-div')
    assert len(figures) == len(figures_from_results(results)) + N_ATTENTION_FIGURES + 1
    for seg in figures:
        assert 'class="main-svg"' in seg, seg[:300]  # plotly ran and drew the figure
        drawn = re.search(r'class="(trace scatter|trace bars|hm)[ "]', seg)
        assert drawn, seg[:300]
        if drawn.group(1) == "hm":
            assert "<image" in seg  # heatmap raster
        else:
            assert re.search(r'<path[^>]+d="M', seg)  # lines / bars
    views = [s.split("</section>")[0] for s in _segments(dom, r'class="circuitsvis-view"')]
    assert len(views) == 3
    for seg in views:  # circuitsvis rendered: pattern canvases and one button per token
        assert seg.count("<canvas") >= 2 and seg.count("<button") > 5


def test_report_reads_results_only_and_says_how_to_record_the_example(tmp_path):
    """The view loads no model: without attention_example.json it says which command records it."""
    import sys

    results = fake_results()
    results.save(tmp_path / "dai" / "results.json")
    loaded = "dualform.models.load" in sys.modules
    text = write_report(tmp_path / "dai").read_text(encoding="utf-8")
    assert ("dualform.models.load" in sys.modules) == loaded  # nothing imported to load a model
    assert "No attention example" in text and "dualform reproduce dai --out" in text
    assert text.count('class="plotly-graph-div') == len(figures_from_results(results))
    assert text.count('<script type="application/gzip+base64">') == 1  # no circuitsvis without views


def test_report_needs_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        write_report(tmp_path)


def test_report_of_another_experiment(tmp_path):
    _extra_dirs(tmp_path)
    text = write_report(tmp_path / "regression", extra_dirs=[]).read_text(encoding="utf-8")
    assert "gd 1step loss" in text and "weights.png" in text
    assert text.count('class="plotly-graph-div') == 1  # curves.html, redrawn


def test_png_export_with_kaleido_and_the_local_chromium(tmp_path, analysis):
    """analyses/readme_figures.py: kaleido renders through the distribution's Chromium, offline."""
    need_chromium("for the PNG export (kaleido)")
    module = analysis("readme_figures")
    module.ensure_browser()
    figs = module.readme_figures(fake_results())
    assert {"overview", "heads_simam", "heads_attribution"} <= set(figs)
    (png,) = module.export({"heads_simam": figs["heads_simam"]}, tmp_path, scale=1)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_the_run_records_the_attention_example_the_report_draws(tmp_path):
    from dualform import DaiConfig, run_dai

    config = DaiConfig(model="tiny-llama", tasks=("afinn-sentiment",), shots=4, n_validation=4,
                       n_test=4, seeds=1, demo_seeds=(1,), lr_grid=(0.1,), untrained_baseline=False,
                       attribution=False)
    results = run_dai(tmp_path, config, progress=False)
    recorded = read_json(tmp_path / ATTENTION_NAME)
    assert recorded["key"]["task"] == "afinn-sentiment"
    assert recorded["example"]["meta"]["lr"] == results.tasks["afinn-sentiment"].seeds[0].selection.lr
    mtime = (tmp_path / ATTENTION_NAME).stat().st_mtime_ns
    run_dai(tmp_path, config, progress=False)  # resumed: nothing recomputed
    assert (tmp_path / ATTENTION_NAME).stat().st_mtime_ns == mtime
    text = write_report(tmp_path).read_text(encoding="utf-8")
    assert text.count("CircuitsVis.AttentionPatterns") == 3
    assert results.versions["transformer_lens"] not in ("unknown", "not installed")


def test_report_command_refuses_a_directory_a_run_is_writing(tmp_path):
    from typer.testing import CliRunner

    from dualform.cli import app
    from dualform.infra.lock import locked

    fake_results().save(tmp_path / "results.json")
    with locked(tmp_path):  # e.g. a reproduce dai still running there
        result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "in use by another dualform run" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "report.html").exists()


def test_long_numeric_lists_summarise_their_defined_values_without_warnings():
    """A long list in a JSON block is summarised; undefined (nan) entries — e.g. SimAM_Δ at an
    unchanged layer — are counted, not averaged in, and an all-undefined list says so without
    numpy's 'Mean of empty slice' warning."""
    import warnings

    from dualform.viz.html_tables import fmt

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fmt([float("nan")] * 10) == "10 values, shape [10]: all undefined (nan)"
        mixed = fmt([float("nan"), 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    assert mixed == "10 values, shape [10]: mean 5, min 1, max 9, 1 undefined"
    assert fmt([float(i) for i in range(10)]) == "10 values, shape [10]: mean 4.5, min 0, max 9"
