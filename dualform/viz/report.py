"""``dualform report RESULTS_DIR``: one self-contained ``report.html`` for a results directory.

The page holds the run's configuration and versions, the paper-layout table
(:func:`dualform.viz.tables.dai_rows`), per task its selection and timings as plain tables, every
figure of :func:`dualform.viz.figures.figures_from_results` with a caption saying what it shows
and what to look for, the attention example the run recorded (``attention_example.json``, see
:mod:`dualform.experiments.dai.attention`) and — when they exist beside it — the regression and
momentum results. It only reads files: no model is loaded.

Offline and small: plotly.js and the circuitsvis bundle are inlined once each, gzip-compressed
and base64-encoded, and unpacked by the browser (``DecompressionStream``); figures are drawn
once the libraries are ready. Nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import html
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs

from dualform.experiments.dai.attention import ATTENTION_NAME, AttentionExample, read_attention
from dualform.experiments.dai.results import DaiResults, TaskResult
from dualform.infra.io import read_json, write_text_atomic
from dualform.viz.attention import (
    attention_views_html,
    circuitsvis_library,
    demo_attention_figure,
    demo_mass_heatmap,
)
from dualform.viz.figures import figures_from_results
from dualform.viz.html_tables import fmt, html_table, json_tables, pairs_table, percent
from dualform.viz.spectra import spectra_figure
from dualform.viz.tables import DIFFERENCE_COLUMNS, TABLES, caption, dai_rows, difference_rows

REPORT_NAME = "report.html"
SIBLINGS = ("regression", "momentum")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:0 24px 48px;color:#222}
h1{margin-top:24px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
figure{margin:0}.figure{min-height:450px}
figcaption{color:#444;font-size:13px;line-height:1.4;padding:4px 8px 0;max-width:900px}
.note{color:#555;font-size:14px;max-width:900px}
img.figure-png{max-width:100%;border:1px solid #eee}nav a{margin-right:12px}
"""
#: Unpacks the gzip+base64 libraries, runs them, then resolves ``dualformReady``.
LOADER = """
window.dualformReady=(async function(){
  for(const el of document.querySelectorAll('script[type="application/gzip+base64"]')){
    const bytes=Uint8Array.from(atob(el.textContent),c=>c.charCodeAt(0));
    const text=await new Response(new Blob([bytes]).stream()
      .pipeThrough(new DecompressionStream("gzip"))).text();
    const s=document.createElement("script");s.text=text;document.head.appendChild(s);
  }
})();
"""

#: What each figure shows and what to look for (keys of figures_from_results; per task by suffix).
CAPTIONS = {
    "accuracy": "Test accuracy (%) per task. ZSL: the query alone; ICL: the demonstrations "
    "followed by the query; FT: the query alone on the model finetuned (W_K and W_V, one SGD "
    "epoch) on the same demonstrations. Look for: ICL above ZSL (the model learns in context) "
    "and how close FT comes to ICL.",
    "overview": "Headline metrics per task (mean over test examples, then layers), beside the same "
    "pipeline on an untrained model with random weights and, for SimAOU and Kendall, a random "
    "update. Look for: a metric is evidence for \"ICL ≈ finetuning\" only where it clearly "
    "exceeds both baselines.",
    "simaou_layers": "SimAOU per layer: cosine between the attention-output change caused by ICL "
    "(h_ICL − h_ZSL) and by finetuning (h_FT − h_ZSL). Normalised is Dai et al.'s (each h "
    "L2-normalised first), unnormalised Deutch et al.'s; the band is the spread over heads; "
    "dashed lines are the random update and the untrained model. Look for: layers where the "
    "solid lines stay above the dashed ones.",
    "simam_layers": "SimAM per layer: cosine of the last token's pre-softmax attention scores "
    "over the query tokens, ICL vs ZSL (before) and ICL vs FT (after). Dai et al.'s claim: after "
    "> before, i.e. finetuning moves attention towards ICL's. Dashed: the untrained model.",
    "simam_delta_layers": "SimAM_Δ per layer (Deutch et al.): cosine of the score changes "
    "ICL − ZSL and FT − ZSL, the fairer attention metric. Look for: values above the untrained "
    "model's (dashed). A gap: no value where ICL or FT leaves the scores unchanged up to rounding "
    "(layer 0 of a rotary model such as SmolLM2, where the query's scores depend only on "
    "relative positions).",
    "kendall_layers": "Kendall τ per layer between how much ICL attends to each demonstration "
    "token and how much the finetuning-side attention weighs the same tokens as training tokens. "
    "Positive: both rank the demonstration tokens alike. Dashed: random.",
    "cos_layers": "cos(ΔW_ICL q, Δz_FT) per layer: does the dual form's ICL update point where "
    "finetuning moves the attention output (hook_z) of the query alone? 0: unrelated, 1: the "
    "same direction; the band is the spread over heads.",
    "heads_simaou_z": "SimAOU of each head's output z, layer × head. Look for heads that stand "
    "out: their ICL update resembles finetuning's.",
    "heads_simam": "SimAM per head: before (ICL vs ZSL), after (ICL vs FT) and their change Δ; "
    "each panel has its own colour scale.",
    "heads_attribution": "Head attribution (first-order attribution patching): each head's effect "
    "on the correct label's logit difference under ICL (left) and under FT (right; an FT effect "
    "belongs to a KV head and is shown on each query head of its group). The title's ρ is the "
    "rank correlation of the two maps: high ρ means ICL and finetuning rely on the same heads.",
    "heads_norms": "Frobenius norms per head of ΔW_ICL (what the demonstrations add to the "
    "linear-attention map) and W_ZSL (what the query's own tokens give), and their ratio. Look "
    "for heads where the demonstrations dominate (ratio above 1).",
    "heads_cos": "cos(ΔW_ICL q, Δz_FT) per head: positive where the ICL update is aligned with "
    "the change finetuning causes, negative where it is opposed.",
    "attention-last-token": "Where the last token (the one that predicts the label) attends, "
    "under ICL, ZSL and FT, on the ICL prompt's positions, all on one attention axis; BOS is "
    "position 0, the demonstrations are shaded. ZSL and FT have no demonstrations in their "
    "prompt, so their bars sit on BOS and the query tokens: FT can reach the demonstrations "
    "only through its weights. The legend gives each condition's mass on BOS and on the "
    "demonstrations. Look for: how much mass ICL moves onto the demonstrations, and whether "
    "FT's pattern differs from ZSL's at all.",
    "attention-demo-mass": "ICL: the last token's attention mass on the demonstration tokens, per "
    "layer and head. Look for the heads that read the demonstrations (bright cells).",
    "spectra": "Singular values of ΔW_ICL and of the finetuning updates ΔW_V, ΔW_K of the KV head "
    "of the query head shown, each divided by its largest (log scale); the legend gives each "
    "effective rank. Look for: whether the ICL update and the finetuning update have a similar "
    "shape (a few dominant directions vs a flat spectrum).",
}

#: Human labels of the run's configuration fields.
CONFIG_LABELS = {
    "model": "model", "tasks": "tasks", "shots": "demonstrations per prompt",
    "n_validation": "validation examples per task", "n_test": "test examples per task",
    "demo_seeds": "demonstration seeds tried", "lr_grid": "learning rates tried",
    "layer_causal": "layer-causal finetuning", "untrained_baseline": "untrained-model baseline",
    "attribution": "head attribution", "device": "device", "dtype": "dtype", "seed": "data seed",
    "batch_size": "query batch size", "reuse_prefix": "demonstration prefix reused",
    "device_map": "device map",
}
TIMING_LABELS = {
    "select_demo_seed": "choose the demonstration seed (ICL, validation)",
    "select_lr": "choose the learning rate (FT, validation)",
    "record_conditions": "record ZSL / ICL / FT on the test examples",
    "attribution": "head attribution", "metrics": "metrics",
    "untrained_baseline": "untrained-model baseline",
}


# --- entry point ---------------------------------------------------------------------------


def write_report(results_dir: str | Path, *, extra_dirs: Sequence[str | Path] | None = None) -> Path:
    """Write ``RESULTS_DIR/report.html`` atomically and return its path.

    ``extra_dirs`` defaults to the ``regression`` and ``momentum`` directories beside
    ``results_dir`` when they exist.
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
        dai_sections(page, DaiResults.from_json(results, results_dir / "results.json"), results_dir)
    else:
        page.section("results", results_dir.name, json_tables(results) + dir_figures(page, results_dir))
    for extra in map(Path, extra_dirs):
        extra_section(page, extra)
    return write_text_atomic(results_dir / REPORT_NAME, page.render())


# --- page assembly -------------------------------------------------------------------------


def packed_script(source: str) -> str:
    """A library as a gzip+base64 ``<script>`` block that :data:`LOADER` unpacks and runs."""
    data = base64.b64encode(gzip.compress(source.encode("utf-8"), 9, mtime=0)).decode("ascii")
    return f'<script type="application/gzip+base64">{data}</script>'


class Page:
    """Sections of HTML; plotly figures are drawn once the packed libraries are unpacked."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[tuple[str, str, str]] = []
        self.needs_circuitsvis = False
        self.n_figures = 0

    def figure(self, fig: go.Figure, key: str, caption: str | None = None) -> str:
        """A figure and its caption (by default the one :data:`CAPTIONS` has for ``key``)."""
        self.n_figures += 1
        div_id = f"fig-{self.n_figures}-{re.sub(r'[^A-Za-z0-9]+', '-', key).strip('-')}"
        spec = json.loads(to_json_plotly(fig))
        payload = json.dumps({"data": spec.get("data", []), "layout": spec.get("layout", {}),
                              "config": {"displaylogo": False, "responsive": True}},
                             separators=(",", ":")).replace("</", "<\\/")
        caption = caption if caption is not None else caption_for(key)
        text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return (f'<figure><div id="{div_id}" class="plotly-graph-div figure"></div>'
                f'<script>dualformReady.then(()=>{{const f={payload};'
                f'Plotly.newPlot("{div_id}",f.data,f.layout,f.config);}});</script>{text}</figure>')

    def section(self, anchor: str, heading: str, body: str) -> None:
        self.sections.append((anchor, heading, body))

    def render(self) -> str:
        nav = " ".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in self.sections)
        parts = [f'<section id="{a}"><h2>{html.escape(h)}</h2>{b}</section>'
                 for a, h, b in self.sections]
        packed = [packed_script(get_plotlyjs())]
        if self.needs_circuitsvis:
            packed.append(packed_script(circuitsvis_library()))
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>"
            + "".join(packed) + f"<script>{LOADER}</script></head><body><h1>{html.escape(self.title)}</h1>"
            f"<p class=\"note\">Generated {stamp}; self-contained (no network).</p>"
            f"<nav>{nav}</nav>" + "".join(parts) + "</body></html>\n"
        )


def caption_for(key: str) -> str:
    """The caption of a figure key (``"task/heads_cos"`` → the ``heads_cos`` caption)."""
    return CAPTIONS.get(key, CAPTIONS.get(key.rsplit("/", 1)[-1], ""))


def dai_sections(page: Page, results: DaiResults, results_dir: Path) -> None:
    """Config, the paper-layout tables, overview, per-task figures and the attention example."""
    page.section("config", "Configuration",
                 pairs_table([(CONFIG_LABELS.get(k, k.replace("_", " ")), fmt(v))
                              for k, v in results.config.items()], ("setting", "value"))
                 + pairs_table([(k, fmt(v)) for k, v in results.versions.items()],
                               ("package", "version")))
    page.section("table", "ICL vs finetuning (Dai et al. layout)", dai_table(results))
    figs = figures_from_results(results)
    overview = [k for k in figs if "/" not in k]
    page.section("overview", "Overview", grid(page.figure(figs[k], k) for k in overview))
    for task, t in results.tasks.items():
        keys = [k for k in figs if k.startswith(f"{task}/")]
        page.section(f"task-{_slug(task)}", f"Task: {task}",
                     task_details(t) + grid(page.figure(figs[k], k) for k in keys))
    page.section("attention", "Attention: ICL vs ZSL vs FT",
                 attention_section(page, results, results_dir))


def grid(items) -> str:
    return f'<div class="grid">{"".join(items)}</div>'


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# --- tables --------------------------------------------------------------------------------


def dai_table(results: DaiResults) -> str:
    """The paper-layout tables (:data:`dualform.viz.tables.TABLES`: one row per task, its
    untrained baseline, pooled; the main table also the paper's rows), the paired differences,
    and the caption saying what the intervals are."""
    def table(columns, rows, first: str) -> str:
        return html_table((first, *(c for c, _ in columns)),
                          [(label, *(row[k] for _, k in columns)) for label, row in rows], "dai",
                          numeric=True)

    return ("".join(f"<h3>{html.escape(spec.title)}</h3>"
                    + table(spec.headers, dai_rows(results, spec), "task / model") for spec in TABLES)
            + "<h3>Paired differences</h3>"
            + table(DIFFERENCE_COLUMNS, difference_rows(results), "paired difference")
            + f'<p class="note">{html.escape(caption(results))}</p>')


def task_details(t: TaskResult) -> str:
    """A task's set-up, each seed's validation choices (accuracies of every candidate), what
    does not apply and why, and where the time went."""
    out = pairs_table([
        ("template", fmt(t.template)), ("label words", fmt(t.label_words)),
        ("demonstrations", fmt(t.shots)), ("test examples", fmt(t.n_test)),
        ("test examples for head attribution", fmt(t.n_attribution)),
        ("test examples for the untrained model", fmt(t.n_untrained)),
        ("f2t examples, all seeds (FT fixes them and ICL too)", fmt(t.n_f2t())),
    ])
    out += html_table(
        ("seed", "chosen demonstration seed", "chosen learning rate",
         "FT fixes (ZSL wrong, FT right)", "f2t", "finetuning left out"),
        [(s.replicate, fmt(s.selection.demo_seed), fmt(s.selection.lr), fmt(s.n_ft_fixed),
          fmt(s.n_f2t), fmt(s.ft_diverged_reason) if s.ft_diverged else "–") for s in t.seeds],
        numeric=True)
    for s in t.seeds:
        sel = s.selection
        for name, accs, chosen, what in (
                ("demonstration seed", sel.demo_seed_val_acc, sel.demo_seed, "ICL validation accuracy"),
                ("learning rate", sel.lr_val_acc, sel.lr, "FT validation accuracy")):
            if accs:
                out += pairs_table([(f"{k}{' (chosen)' if str(k) == str(chosen) else ''}", percent(v))
                                    for k, v in accs.items()], (f"seed {s.replicate}: {name}", what))
    notes = {f"{metric}: not applicable": why for s in t.seeds for metric, why in s.notes.items()}
    out += pairs_table([(k, fmt(v)) for k, v in notes.items()])
    if t.timing_s:
        out += pairs_table([(TIMING_LABELS.get(k, k.replace("_", " ")), f"{v:.1f} s")
                            for k, v in t.timing_s.items()], ("stage", "time"))
    return out


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
    """Every ``*.html`` plotly figure (redrawn with the page's plotly.js) and ``*.png`` image,
    captioned with its file name."""
    items, drawn = [], set()
    for path in sorted(directory.glob("*.html")):
        if path.name == REPORT_NAME:
            continue
        fig = figure_from_html(path)
        if fig is not None:
            items.append(page.figure(fig, f"{directory.name}-{path.stem}", caption=path.name))
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


def attention_section(page: Page, results: DaiResults, results_dir: Path) -> str:
    """Plotly attention figures, circuitsvis views and ΔW spectra of the recorded example."""
    recorded = read_attention(results_dir, results)
    if recorded is None:
        return (f'<p class="note">No attention example for this run in {html.escape(ATTENTION_NAME)}'
                " (every learning rate diverged, or the run predates it): rerun "
                f"<code>dualform reproduce dai --out {html.escape(str(results_dir))}</code> with the same "
                "options; finished tasks are skipped and the example is recorded.</p>")
    example = AttentionExample.from_dict(recorded["example"])
    page.needs_circuitsvis = True
    meta = example.meta
    note = (f'<p class="note">Task {html.escape(str(meta.get("task")))}, first test example, '
            f'{meta.get("n_demos")} of the run\'s demonstrations (selected seed); FT = finetune_kv on '
            f'those demonstrations with the selected learning rate {meta.get("lr")}. ZSL and FT prompts '
            f"hold the query only. Layer {example.view_layer} is where finetuning moved the last "
            "token's attention most (total variation against ZSL).</p>")
    spectra = {k: np.array(v) for k, v in recorded["spectra"].items()}
    layer, head = recorded["spectra_layer"], recorded["spectra_head"]
    figs = [page.figure(demo_attention_figure(example), "attention-last-token"),
            page.figure(demo_mass_heatmap(example), "attention-demo-mass"),
            page.figure(spectra_figure(spectra, f"Singular values at layer {layer}, head {head}",
                                       layer=layer, head=head), "spectra")]
    views = ("<p class=\"note\">Full attention patterns of layer "
             f"{example.view_layer}, every head (circuitsvis): hover a token to see where it "
             "attends; ICL's prompt holds the demonstrations, ZSL's and FT's only the query.</p>"
             + attention_views_html(example, library=False, deferred=True))
    return note + grid(figs) + views


# --- a browser for checks and PNG export ---------------------------------------------------


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on ``PATH`` (``None`` if there is none)."""
    return next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)
