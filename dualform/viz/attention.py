"""Views of a run's attention example: last-token attention under ZSL / ICL / FT (plotly) and the
full patterns as offline circuitsvis views.

The example itself is recorded by the experiment (:mod:`dualform.experiments.dai.attention`,
``attention_example.json``); this module only draws it. All three conditions are shown on the
ICL prompt's positions (:meth:`AttentionExample.aligned_last_row`): ZSL and FT have no
demonstrations in their prompt, so their bars sit on BOS and the query tokens only.

The circuitsvis views embed the JavaScript bundled in the installed ``circuitsvis`` package
(``circuitsvis/dist/cdn/iife.js``) — never the CDN — so they work offline and in a saved file.
"""

from __future__ import annotations

import json
import uuid
from functools import cache
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dualform.experiments.dai.attention import AttentionExample
from dualform.viz.maps import CONDITION_COLORS, TEMPLATE, head_heatmap

CONDITIONS = ("icl", "zsl", "ft")
LABELS = {"icl": "ICL", "zsl": "ZSL", "ft": "FT"}
ROW_STYLE = "display:flex;flex-wrap:wrap;gap:16px"
COLUMN_STYLE = "flex:1 1 30%;min-width:320px;overflow:auto"


def demo_attention_figure(example: AttentionExample, layer: int | None = None,
                          head: int | None = None, *, include_bos: bool = True) -> go.Figure:
    """Attention of the last token to every prompt position under ICL, ZSL and FT.

    One row per condition on the ICL prompt's positions, the demonstration span shaded, all
    rows on one shared attention axis so the conditions compare at a glance. ``head=None``
    averages over heads. The BOS position (often an attention sink) is drawn as position 0
    unless ``include_bos=False``; its weight is also given in each row's legend entry.
    """
    layer = example.view_layer if layer is None else layer
    conds = [c for c in CONDITIONS if c in example.last_row]
    fig = make_subplots(rows=len(conds), cols=1, shared_xaxes=True, shared_yaxes="all",
                        vertical_spacing=0.06, subplot_titles=[LABELS[c] for c in conds])
    start = 0 if include_bos else example.demo_start
    tokens = example.tokens["icl"]
    for row, cond in enumerate(conds, start=1):
        values = example.aligned_last_row(cond, layer)
        values = values.mean(0) if head is None else values[head]
        fig.add_trace(_bar(values, tokens, start, cond, example, layer, head), row=row, col=1)
        fig.add_vrect(x0=example.demo_slice.start - 0.5, x1=example.demo_slice.stop - 0.5,
                      fillcolor="#ffdd88", opacity=0.25, line_width=0, row=row, col=1)
        fig.update_yaxes(title_text="attention", row=row, col=1)
    which = "mean over heads" if head is None else f"head {head}"
    fig.update_layout(
        title=f"Last-token attention, layer {layer} ({which}); shaded: demonstrations",
        template=TEMPLATE, bargap=0.05, height=240 + 160 * len(conds),
        legend={"orientation": "h", "yanchor": "top", "y": -0.12, "x": 0},
    )
    fig.update_xaxes(title_text="position in the ICL prompt", row=len(conds), col=1)
    return fig


def _bar(values: np.ndarray, tokens: list[str], start: int, cond: str,
         example: AttentionExample, layer: int, head: int | None) -> go.Bar:
    bos = f", BOS {values[0]:.2f}" if example.demo_start > 0 else ""
    demos = (f"{np.nansum(values[example.demo_slice]):.2f} on demos" if cond == "icl"
             else "no demos in its prompt")
    name = f"{LABELS[cond]}: {demos}{bos}"
    x = np.arange(start, len(tokens))
    head_text = "mean over heads" if head is None else f"head {head}"
    return go.Bar(
        x=x, y=values[start:], name=name, marker_color=CONDITION_COLORS[cond],
        customdata=[_token_label(tokens[i]) for i in x],
        hovertemplate=f"{LABELS[cond]} · layer {layer}, {head_text}<br>position %{{x}} "
        "'%{customdata}'<br>attention %{y:.4f}<extra></extra>",
    )


def demo_mass_heatmap(example: AttentionExample) -> go.Figure:
    """Layer×head map of the ICL last-token attention mass on the demonstrations."""
    return head_heatmap(example.demo_mass(), "ICL: last-token attention on the demonstrations",
                        colorbar="mass", diverging=False)


def _token_label(token: str) -> str:
    return token.replace("\n", "↵").replace(" ", "·")


# --- circuitsvis, offline ------------------------------------------------------------------


@cache
def circuitsvis_library() -> str:
    """The circuitsvis browser bundle shipped in the installed package, safe to inline."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise FileNotFoundError(f"circuitsvis has no bundled JavaScript at {path}; reinstall it.")
    source = path.read_text(encoding="utf-8")
    source = source.replace("//# sourceMappingURL=iife.js.map", "")
    return source.replace("</script", "<\\/script")


def circuitsvis_script() -> str:
    """One ``<script>`` that defines the global ``CircuitsVis`` (include once per page)."""
    return f"<script>{circuitsvis_library()}</script>"


def circuitsvis_view(element: str, props: dict, *, height: str | None = None,
                     deferred: bool = False) -> str:
    """A ``<div>`` rendered by ``CircuitsVis.render(id, CircuitsVis.<element>, props)``;
    ``deferred`` waits for the page's ``dualformReady`` promise (the report's packed bundle)."""
    div_id = f"circuits-vis-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(props, separators=(",", ":")).replace("</", "<\\/")
    style = f' style="height:{height}"' if height else ""
    call = f'CircuitsVis.render("{div_id}", CircuitsVis.{element}, {payload});'
    if deferred:
        call = f"dualformReady.then(()=>{{{call}}});"
    return f'<div id="{div_id}" class="circuitsvis-view"{style}></div>\n<script>{call}</script>'


def attention_views_html(example: AttentionExample, *, library: bool = True,
                         deferred: bool = False) -> str:
    """ICL, ZSL and FT attention patterns of ``example.view_layer`` side by side (circuitsvis).

    ``library=True`` inlines the circuitsvis bundle (standalone use / notebooks); a page with
    several views inlines it once and passes ``library=False`` (``deferred``: see
    :func:`circuitsvis_view`).
    """
    columns = []
    for cond in (c for c in CONDITIONS if c in example.full):
        n_heads = len(example.full[cond])
        props = {"tokens": example.tokens[cond], "attention": example.full[cond],
                 "attentionHeadNames": [f"L{example.view_layer}H{h}" for h in range(n_heads)]}
        columns.append(
            f'<div class="cv-column" style="{COLUMN_STYLE}"><h4>{LABELS[cond]} — layer {example.view_layer}, '
            f"{len(example.tokens[cond])} tokens</h4>{circuitsvis_view('AttentionPatterns', props, deferred=deferred)}</div>"
        )
    body = f'<div class="cv-row" style="{ROW_STYLE}">' + "".join(columns) + "</div>"
    return (circuitsvis_script() if library else "") + body


class OfflineHTML:
    """HTML that notebooks display as is (``_repr_html_``), e.g. :func:`attention_views_html`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def _repr_html_(self) -> str:
        return self.source

    def __str__(self) -> str:
        return self.source


def attention_views(example: AttentionExample) -> OfflineHTML:
    """Notebook-friendly offline circuitsvis views (the bundle inlined, no CDN)."""
    return OfflineHTML(attention_views_html(example, library=True))
