"""Attention of the last token under ZSL / ICL / FT: a plotly figure and offline circuitsvis views.

:func:`attention_example` runs one query three ways and keeps the attention patterns
(``hook_pattern`` via :func:`dualform.probes.capture`):

* ICL — demonstrations + query on the pretrained model;
* ZSL — the query alone on the pretrained model;
* FT  — the query alone on the model finetuned (:func:`dualform.finetune_kv`) on the same
  demonstrations.

Only ICL has the demonstrations in its prompt; ZSL and FT see the query's own tokens (plus BOS).
The figures therefore put all three on the ICL prompt's positions: ZSL/FT values sit on the
query tokens (and BOS), and the demonstration span is empty for them — FT can only reach the
demonstrations through its weights. :class:`AttentionExample` is JSON-serialisable so a report
can be redrawn without the model.

The circuitsvis views embed the JavaScript bundled in the installed ``circuitsvis`` package
(``circuitsvis/dist/cdn/iife.js``) — never the CDN — so they work offline and in a saved file.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dualform.infra.reprs import compact_repr
from dualform.viz.maps import CONDITION_COLORS, TEMPLATE, as_array, head_heatmap

CONDITIONS = ("icl", "zsl", "ft")
LABELS = {"icl": "ICL", "zsl": "ZSL", "ft": "FT"}
ROW_STYLE = "display:flex;flex-wrap:wrap;gap:16px"
COLUMN_STYLE = "flex:1 1 30%;min-width:320px;overflow:auto"


@dataclass
class AttentionExample:
    """Last-token attention (all layers) and full patterns (one layer) of one query."""

    tokens: dict[str, list[str]]  # condition → its prompt's tokens
    last_row: dict[str, list]  # condition → [layer][head][k_pos] of the last query position
    full: dict[str, list]  # condition → [head][q_pos][k_pos] at ``view_layer``
    view_layer: int
    demo_start: int  # first demonstration position in the ICL prompt (1 with a BOS)
    n_demo_tokens: int
    meta: dict = field(default_factory=dict)

    __repr__ = compact_repr

    @property
    def demo_slice(self) -> slice:
        return slice(self.demo_start, self.demo_start + self.n_demo_tokens)

    def aligned_last_row(self, condition: str, layer: int) -> np.ndarray:
        """``[head, k_pos]`` on the ICL prompt's positions (NaN where the prompt has no token)."""
        row = as_array(self.last_row[condition])[layer]
        if condition == "icl":
            return row
        out = np.full((row.shape[0], len(self.tokens["icl"])), np.nan)
        out[:, : self.demo_start] = row[:, : self.demo_start]
        out[:, self.demo_slice.stop :] = row[:, self.demo_start :]
        return out

    def demo_mass(self) -> np.ndarray:
        """ICL attention mass of the last token on the demonstrations, ``[layer, head]``."""
        return as_array(self.last_row["icl"])[:, :, self.demo_slice].sum(-1)

    def ft_shift(self) -> np.ndarray:
        """Per layer, how far FT moved the last token's attention from ZSL (total variation,
        mean over heads); ``[layer]``."""
        return _total_variation(as_array(self.last_row["ft"]), as_array(self.last_row["zsl"]))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AttentionExample:
        return cls(**data)


def attention_example(model, task, demos, query, *, ft=None, lr: float | None = None,
                      layer: int | None = None, digits: int = 4) -> AttentionExample:
    """Run ``query`` under ICL (with ``demos``), ZSL and FT and keep the attention patterns.

    ``ft`` is a :class:`dualform.core.finetune.FinetuneResult`; without it, ``finetune_kv`` is run on
    ``demos`` with ``lr`` (no FT condition when both are ``None``). ``layer`` picks the layer of
    the full patterns; by default the layer where finetuning moved the last token's attention
    most (:meth:`AttentionExample.ft_shift`), or without FT the layer that puts the most ICL
    attention on the demonstrations.
    """
    from dualform.core.finetune import finetune_kv
    from dualform.experiments.dai.conditions import demo_training_texts, prompt_pair

    pair = prompt_pair(model, task, demos, query)
    if ft is None and lr is not None:
        ft = finetune_kv(model, demo_training_texts(model, task, demos), lr)
    runs = {"icl": (model, pair.icl.tokens), "zsl": (model, pair.zsl.tokens)}
    if ft is not None:
        runs["ft"] = (ft.model, pair.zsl.tokens)
    patterns = {c: _patterns(m, t) for c, (m, t) in runs.items()}  # [layer, head, q, k]
    demo = slice(pair.icl.demo_start, pair.icl.demo_start + pair.icl.n_demo_tokens)
    if layer is None:
        layer = _default_layer(patterns, demo)
    return AttentionExample(
        tokens={c: [str(s) for s in model.to_str_tokens(t[0])] for c, (_, t) in runs.items()},
        last_row={c: np.round(p[:, :, -1], digits).tolist() for c, p in patterns.items()},
        full={c: np.round(p[layer], digits).tolist() for c, p in patterns.items()},
        view_layer=layer, demo_start=pair.icl.demo_start, n_demo_tokens=pair.icl.n_demo_tokens,
        meta={"task": task.name, "n_demos": len(demos), "lr": None if ft is None else ft.lr},
    )


def _total_variation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``½ Σ_k |a − b|`` over key positions, mean over heads: ``[layer, head, k]`` → ``[layer]``."""
    return 0.5 * np.abs(a - b).sum(-1).mean(-1)


def _default_layer(patterns: dict[str, np.ndarray], demo: slice) -> int:
    if "ft" in patterns:
        return int(_total_variation(patterns["ft"][:, :, -1], patterns["zsl"][:, :, -1]).argmax())
    return int(patterns["icl"][:, :, -1, demo].sum(-1).mean(-1).argmax())


def _patterns(model, tokens) -> np.ndarray:
    from dualform.probes import capture

    cap = capture(model, tokens, hooks=("pattern",))
    return cap.stack("pattern")[:, 0].double().cpu().numpy()


def demo_attention_figure(example: AttentionExample, layer: int | None = None,
                          head: int | None = None, *, include_bos: bool = False) -> go.Figure:
    """Attention of the last token to every prompt position under ICL, ZSL and FT.

    One row per condition on the ICL prompt's positions, the demonstration span shaded.
    ``head=None`` averages over heads. The BOS position (an attention sink) is left out unless
    ``include_bos``; its weight is given in each row's legend entry.
    """
    layer = example.view_layer if layer is None else layer
    conds = [c for c in CONDITIONS if c in example.last_row]
    fig = make_subplots(rows=len(conds), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[LABELS[c] for c in conds])
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


def circuitsvis_view(element: str, props: dict, *, height: str | None = None) -> str:
    """A ``<div>`` rendered by ``CircuitsVis.render(id, CircuitsVis.<element>, props)``."""
    div_id = f"circuits-vis-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(props, separators=(",", ":")).replace("</", "<\\/")
    style = f' style="height:{height}"' if height else ""
    return (f'<div id="{div_id}" class="circuitsvis-view"{style}></div>\n'
            f'<script>CircuitsVis.render("{div_id}", CircuitsVis.{element}, {payload});</script>')


def attention_views_html(example: AttentionExample, *, library: bool = True) -> str:
    """ICL, ZSL and FT attention patterns of ``example.view_layer`` side by side (circuitsvis).

    ``library=True`` inlines the circuitsvis bundle (standalone use / notebooks); a page with
    several views inlines :func:`circuitsvis_script` once and passes ``library=False``.
    """
    columns = []
    for cond in (c for c in CONDITIONS if c in example.full):
        n_heads = len(example.full[cond])
        props = {"tokens": example.tokens[cond], "attention": example.full[cond],
                 "attentionHeadNames": [f"L{example.view_layer}H{h}" for h in range(n_heads)]}
        columns.append(
            f'<div class="cv-column" style="{COLUMN_STYLE}"><h4>{LABELS[cond]} — layer {example.view_layer}, '
            f"{len(example.tokens[cond])} tokens</h4>{circuitsvis_view('AttentionPatterns', props)}</div>"
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
