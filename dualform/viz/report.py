"""``dualform report RESULTS_DIR``: one self-contained ``report.html`` for a results directory.

The page holds the run's configuration, the paper-layout table (:func:`dualform.viz.tables.dai_rows`),
every figure of :func:`dualform.viz.figures.figures_from_results`, an attention example (ICL vs ZSL vs
FT, plotly and circuitsvis, plus the singular-value spectra of ΔW_ICL vs ΔW_FT), and — when they
exist beside it — the regression and momentum results (their JSON as tables, their figures).
plotly.js and the circuitsvis bundle are inlined once each; the page loads nothing from the
network. The attention example needs the model once; it is cached in
``attention_example.json`` so later reports are redrawn from files alone.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from dualform.infra.io import as_stored, read_json, write_text_atomic
from dualform.viz.figures import (
    AttentionExample,
    attention_views_html,
    circuitsvis_script,
    demo_attention_figure,
    demo_mass_heatmap,
    figures_from_results,
    spectra_figure,
)
from dualform.viz.tables import TABLES, dai_rows

REPORT_NAME = "report.html"
CACHE_NAME = "attention_example.json"
CACHE_VERSION = 2  # bump when the cached example's content changes
SIBLINGS = ("regression", "momentum")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:0 24px 48px;color:#222}
h1{margin-top:24px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px}
.figure{min-height:450px}.note{color:#555;font-size:14px;max-width:900px}
img.figure-png{max-width:100%;border:1px solid #eee}nav a{margin-right:12px}
"""


# --- entry point ---------------------------------------------------------------------------


def write_report(results_dir: str | Path, *, attention: bool = True,
                 extra_dirs: Sequence[str | Path] | None = None, max_demos: int = 8) -> Path:
    """Write ``RESULTS_DIR/report.html`` atomically and return its path.

    ``attention`` adds the attention example (loads the run's model once, then cached);
    ``extra_dirs`` defaults to the ``regression`` and ``momentum`` directories beside
    ``results_dir`` when they exist; ``max_demos`` caps the demonstrations of the example.
    """
    results_dir = Path(results_dir)
    results = read_json(results_dir / "results.json")
    if results is None:
        raise FileNotFoundError(f"No results.json in {results_dir}; run `dualform reproduce` first.")
    if extra_dirs is None:
        extra_dirs = [results_dir.parent / n for n in SIBLINGS
                      if (results_dir.parent / n).resolve() != results_dir.resolve()]
    page = Page(title=f"dualform report — {results_dir}")
    if "tasks" in results:
        dai_sections(page, results, results_dir, attention=attention, max_demos=max_demos)
    else:
        page.section("results", results_dir.name, json_tables(results) + dir_figures(page, results_dir))
    for extra in map(Path, extra_dirs):
        extra_section(page, extra)
    return write_text_atomic(results_dir / REPORT_NAME, page.render())


# --- page assembly -------------------------------------------------------------------------


class Page:
    """Sections of HTML, with plotly figures drawn by the single inlined plotly.js."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[tuple[str, str, str]] = []
        self.needs_circuitsvis = False
        self.n_figures = 0

    def figure(self, fig: go.Figure, key: str) -> str:
        self.n_figures += 1
        div_id = f"fig-{self.n_figures}-{re.sub(r'[^A-Za-z0-9]+', '-', key).strip('-')}"
        body = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})
        return f'<div class="figure">{body}</div>'

    def section(self, anchor: str, heading: str, body: str) -> None:
        self.sections.append((anchor, heading, body))

    def render(self) -> str:
        nav = " ".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in self.sections)
        parts = [f'<section id="{a}"><h2>{html.escape(h)}</h2>{b}</section>'
                 for a, h, b in self.sections]
        scripts = [f"<script>{get_plotlyjs()}</script>"]
        if self.needs_circuitsvis:
            scripts.append(circuitsvis_script())
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>"
            + "".join(scripts) + f"</head><body><h1>{html.escape(self.title)}</h1>"
            f"<p class=\"note\">Generated {stamp}; self-contained (no network).</p>"
            f"<nav>{nav}</nav>" + "".join(parts) + "</body></html>\n"
        )


def dai_sections(page: Page, results: dict, results_dir: Path, *, attention: bool,
                 max_demos: int) -> None:
    """Config, the paper-layout table, overview, per-task figures and the attention example."""
    page.section("config", "Configuration", kv_table(results.get("config", {}))
                 + kv_table(results.get("versions", {})))
    page.section("table", "ICL vs finetuning (Dai et al. layout)", dai_table(results))
    figs = figures_from_results(results)
    overview = [k for k in figs if "/" not in k]
    page.section("overview", "Overview", grid(page.figure(figs[k], k) for k in overview))
    for task, t in results["tasks"].items():
        keys = [k for k in figs if k.startswith(f"{task}/")]
        details = kv_table({k: v for k, v in t.items() if _is_detail(k, v)})
        page.section(f"task-{_slug(task)}", f"Task: {task}",
                     details + grid(page.figure(figs[k], k) for k in keys))
    if attention:
        page.section("attention", "Attention: ICL vs ZSL vs FT",
                     attention_section(page, results, results_dir, max_demos))


def _is_detail(key: str, value) -> bool:
    return key in ("template", "label_words", "shots", "n_test", "n_ft_fixed", "n_f2t",
                   "ft_diverged", "ft_diverged_reason", "notes", "selection", "timing_s")


def grid(items) -> str:
    return f'<div class="grid">{"".join(items)}</div>'


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# --- tables --------------------------------------------------------------------------------


def dai_table(results: dict) -> str:
    """The paper-layout tables (:data:`dualform.viz.tables.TABLES`): one row per task (and its
    untrained baseline), the main table also the paper's rows."""
    parts = []
    for spec in TABLES:
        head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in spec.columns)
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td>"
            + "".join(f'<td class="num">{html.escape(row[k])}</td>' for _, k in spec.columns) + "</tr>"
            for label, row in dai_rows(results, spec)
        )
        parts.append(f'<h3>{html.escape(spec.title)}</h3>'
                     f'<table class="dai"><tr><th>task / model</th>{head}</tr>{rows}</table>')
    return "".join(parts)


def fmt(value) -> str:
    """A compact cell: floats to 4 significant digits, long lists summarised, ``None`` → –."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and _numeric(value) and len(value) > 8:
        arr = np.array(value, dtype=float)
        return (f"{arr.size} values, shape {list(arr.shape)}: mean {np.nanmean(arr):.4g}, "
                f"min {np.nanmin(arr):.4g}, max {np.nanmax(arr):.4g}")
    if isinstance(value, list | dict):
        text = json.dumps(value, default=str)
        return text if len(text) <= 160 else text[:157] + "…"
    return str(value)


def _numeric(values: list) -> bool:
    try:
        np.array(values, dtype=float)
    except (TypeError, ValueError):
        return False
    return True


def kv_table(data: dict) -> str:
    """A two-column table of the flattened leaves of ``data`` (dotted keys)."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(fmt(v))}</td></tr>"
                   for k, v in flatten(data))
    return f'<table class="kv">{rows}</table>' if rows else ""


def flatten(data, prefix: str = "", depth: int = 6):
    """``(dotted key, leaf)`` pairs; lists (of numbers or records) are leaves."""
    if isinstance(data, dict) and depth > 0:
        for key, value in data.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key), depth - 1)
    else:
        yield prefix or "value", data


def records_table(rows: list[dict]) -> str:
    """A list of dicts as one table (columns: the union of their keys, first-seen order)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f'<table class="records"><tr>{head}</tr>{body}</table>'


def json_tables(data, *, max_rows: int = 400) -> str:
    """Any JSON value as HTML tables, without knowing its schema.

    Each top-level key becomes a sub-heading; lists of records become tables with one row per
    record; everything else is flattened to ``dotted.key → value`` rows (numeric lists
    summarised). At most ``max_rows`` rows per table.
    """
    if not isinstance(data, dict):
        data = {"value": data}
    out = []
    for key, value in data.items():
        out.append(f"<h4>{html.escape(str(key))}</h4>")
        if _is_records(value):
            out.append(records_table(value[:max_rows]))
        else:
            pairs = list(flatten(value, "" if isinstance(value, dict) else str(key)))[:max_rows]
            out.append(kv_table(dict(pairs)) if pairs else "")
    return "".join(out)


def _is_records(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


# --- figures of other experiments ----------------------------------------------------------


def figure_from_html(path: Path) -> go.Figure | None:
    """The plotly figure inside an HTML file written by ``fig.write_html`` (``None`` if absent)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    match = re.search(r'Plotly\.newPlot\(\s*"[^"]*"\s*,\s*', text)
    if match is None:
        return None
    decoder = json.JSONDecoder()
    try:
        data, end = decoder.raw_decode(text, match.end())
        comma = re.compile(r"\s*,\s*").match(text, end)
        layout = decoder.raw_decode(text, comma.end())[0] if comma else {}
        return go.Figure(data=data, layout=layout)
    except ValueError:
        return None


def dir_figures(page: Page, directory: Path) -> str:
    """Every ``*.html`` plotly figure (redrawn with the page's plotly.js) and ``*.png`` image."""
    items, drawn = [], set()
    for path in sorted(directory.glob("*.html")):
        if path.name == REPORT_NAME:
            continue
        fig = figure_from_html(path)
        if fig is not None:
            items.append(page.figure(fig, f"{directory.name}-{path.stem}"))
            drawn.add(path.stem)
    for path in sorted(directory.glob("*.png")):
        if path.stem not in drawn:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            items.append(f'<figure><img class="figure-png" alt="{html.escape(path.name)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}'
                         "</figcaption></figure>")
    return grid(items) if items else ""


def extra_section(page: Page, directory: Path) -> None:
    """A section for another experiment's directory (``results.json`` + figures), if present."""
    results = read_json(directory / "results.json")
    figures = dir_figures(page, directory) if directory.is_dir() else ""
    if results is None and not figures:
        return
    body = (json_tables(results) if results is not None else "") + figures
    page.section(f"extra-{_slug(directory.name)}", f"{directory.name} ({directory})", body)


# --- the attention example -----------------------------------------------------------------


def attention_section(page: Page, results: dict, results_dir: Path, max_demos: int) -> str:
    """Plotly attention figures, circuitsvis views and ΔW spectra of the cached example."""
    try:
        cached = attention_cache(results, results_dir, max_demos)
    except Exception as err:  # the model may be unavailable offline: the rest of the report stands
        return f'<p class="note">Attention example not available: {html.escape(repr(err))}</p>'
    if cached is None:
        return '<p class="note">No task with a finetuned model (every learning rate diverged).</p>'
    example = AttentionExample.from_dict(cached["example"])
    page.needs_circuitsvis = True
    meta = example.meta
    note = (f'<p class="note">Task {html.escape(str(meta.get("task")))}, first test example, '
            f'{meta.get("n_demos")} of the run\'s demonstrations (selected seed); FT = finetune_kv on '
            f'those demonstrations with the selected lr {meta.get("lr")}. ZSL and FT prompts hold the '
            f"query only. Layer {example.view_layer}: where finetuning moved the last token's "
            "attention most (total variation vs ZSL). Spectra: singular values of ΔW_ICL vs ΔW_V / ΔW_K of FT for the KV head of "
            "the query head shown (each divided by its largest).</p>")
    figs = [page.figure(demo_attention_figure(example), "attention-last-token"),
            page.figure(demo_mass_heatmap(example), "attention-demo-mass")]
    spectra = {k: np.array(v) for k, v in cached["spectra"].items()}
    figs.append(page.figure(spectra_figure(
        spectra, f"Singular values at layer {cached['spectra_layer']}, head {cached['spectra_head']}",
        layer=cached["spectra_layer"], head=cached["spectra_head"]), "spectra"))
    return note + grid(figs) + attention_views_html(example, library=False)


def attention_cache(results: dict, results_dir: Path, max_demos: int) -> dict | None:
    """The attention example and spectra, from ``attention_example.json`` or computed once."""
    task = next((n for n, t in results["tasks"].items()
                 if t.get("selection", {}).get("lr") is not None), None)
    if task is None:
        return None
    key = {"config": results["config"], "task": task, "max_demos": max_demos,
           "version": CACHE_VERSION}
    path = results_dir / CACHE_NAME
    cached = read_json(path)
    if cached is not None and cached.get("key") == as_stored(key):
        return cached
    cached = as_stored({"key": key, **compute_attention(results, task, max_demos)})
    write_text_atomic(path, json.dumps(cached, separators=(",", ":")))
    return cached


def compute_attention(results: dict, task_name: str, max_demos: int) -> dict:
    """Load the run's model and task, finetune on the demonstrations, record the example."""
    from dualform.core.dual_form import dual_form
    from dualform.core.finetune import finetune_kv
    from dualform.experiments.dai.conditions import demo_training_texts
    from dualform.models.load import load_model
    from dualform.tasks.prompts import build_prompt, load_task, prompt_tokens, sample_demos
    from dualform.viz.figures import attention_example, head_spectra

    config, sel = results["config"], results["tasks"][task_name]["selection"]
    task = load_task(task_name, seed=config["seed"], n_validation=config["n_validation"],
                     n_test=config["n_test"])
    demos = sample_demos(task, config["shots"], sel["demo_seed"])[:max_demos]
    model = load_model(config["model"], device="cpu")
    ft = finetune_kv(model, demo_training_texts(model, task, demos), sel["lr"], device="cpu")
    example = attention_example(model, task, demos, task.test[0], ft=ft)
    pt = prompt_tokens(model, build_prompt(task, demos, task.test[0]))
    dual = dual_form(model, pt.tokens, pt.n_demo_tokens, demo_start=pt.demo_start,
                     layers=[example.view_layer])
    head = int(np.argmax(example.demo_mass()[example.view_layer]))
    spectra = head_spectra(dual, ft, example.view_layer, head)
    return {"example": example.to_dict(), "spectra": {k: v.tolist() for k, v in spectra.items()},
            "spectra_layer": example.view_layer, "spectra_head": head}


# --- a browser for checks and PNG export ---------------------------------------------------


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on ``PATH`` (``None`` if there is none)."""
    return next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)
