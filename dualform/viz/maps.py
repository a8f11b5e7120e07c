"""Plotly figures of per-layer and per-head metrics: layer×head heatmaps and per-layer lines.

Inputs are plain nested lists / arrays as stored in ``results.json`` (``None`` = not finite),
so every figure can be redrawn from the JSON alone. Hover text always names the layer, the
head (for maps) and the value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

TEMPLATE = "plotly_white"
#: Colours of the three conditions, used by every figure.
CONDITION_COLORS = {"zsl": "#7f7f7f", "icl": "#1f77b4", "ft": "#d62728"}
BASELINE_COLORS = {"random": "#9467bd", "untrained": "#8c564b"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf")


def as_array(values) -> np.ndarray:
    """Nested lists (``None`` → NaN), arrays or tensors → a float numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.array(values, dtype=float)


def _heatmap(values, *, coloraxis: str | None = None, name: str = "") -> go.Heatmap:
    z = as_array(values)
    n_layers, n_heads = z.shape
    return go.Heatmap(
        z=z, x=list(range(n_heads)), y=list(range(n_layers)), coloraxis=coloraxis, name=name,
        hovertemplate=f"{name}<br>" * bool(name)
        + "layer %{y}<br>head %{x}<br>value %{z:.4g}<extra></extra>",
    )


def _color_axis(values: Sequence, diverging: bool, title: str) -> dict:
    if not diverging:
        return {"colorscale": "Viridis", "colorbar": {"title": {"text": title}}}
    finite = [np.nanmax(np.abs(as_array(v))) for v in values]
    bound = float(np.nanmax(finite)) if finite and np.isfinite(np.nanmax(finite)) else 1.0
    return {"colorscale": "RdBu", "reversescale": True, "cmid": 0.0, "cmin": -bound,
            "cmax": bound, "colorbar": {"title": {"text": title}}}


def _marks(marks, name: str = "") -> go.Scatter:
    """Open circles on the heads where ``marks[layer][head]`` is true (e.g. the head's 95 %
    interval excludes 0)."""
    layers, heads = np.nonzero(np.array(marks, dtype=bool))
    return go.Scatter(x=heads.tolist(), y=layers.tolist(), mode="markers", showlegend=False,
                      name=f"{name} interval excludes 0".strip(), hoverinfo="skip",
                      marker={"symbol": "circle-open", "size": 7, "color": "black",
                              "line": {"width": 1.5}})


def head_heatmap(values, title: str, *, colorbar: str = "", diverging: bool = True,
                 marks=None) -> go.Figure:
    """Layer×head map of one per-head metric (``values[layer][head]``).

    Signed metrics (``diverging=True``) use a red/blue scale centred on 0, norms a sequential
    one. Layer 0 is at the bottom, as in a model diagram. ``marks[layer][head]`` (booleans)
    circles the heads whose effect is distinguishable from zero.
    """
    fig = go.Figure(_heatmap(values, coloraxis="coloraxis"))
    if marks is not None:
        fig.add_trace(_marks(marks))
    fig.update_layout(
        title=title, template=TEMPLATE, coloraxis=_color_axis([values], diverging, colorbar),
        xaxis={"title": "head", "dtick": _dtick(values, 1)}, yaxis={"title": "layer", "dtick": _dtick(values)},
    )
    return fig


def head_heatmaps(maps: Mapping[str, object], title: str, *, diverging: bool = True,
                  shared_scale: bool = True, colorbar: str = "",
                  marks: Mapping[str, object] | None = None) -> go.Figure:
    """Several layer×head maps side by side (e.g. SimAM before / after / Δ, ICL vs FT effects).

    ``shared_scale`` puts all panels on one colour scale (comparable values); otherwise each
    panel gets its own colour bar (values on different scales, e.g. ICL vs FT attribution).
    ``marks[name]`` circles that panel's heads as in :func:`head_heatmap`.
    """
    names = list(maps)
    spacing = 0.05 if shared_scale else 0.12
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=spacing)
    for i, name in enumerate(names, start=1):
        axis = "coloraxis" if shared_scale else f"coloraxis{i if i > 1 else ''}"
        fig.add_trace(_heatmap(maps[name], coloraxis=axis, name=name), row=1, col=i)
        if marks and marks.get(name) is not None:
            fig.add_trace(_marks(marks[name], name), row=1, col=i)
        fig.update_xaxes(title_text="head", dtick=_dtick(maps[name], 1), row=1, col=i)
    fig.update_yaxes(title_text="layer", dtick=_dtick(next(iter(maps.values()))), row=1, col=1)
    axes = [list(maps.values())] if shared_scale else [[v] for v in maps.values()]
    for i, group in enumerate(axes, start=1):
        spec = _color_axis(group, diverging, colorbar)
        if not shared_scale:
            domain = fig.layout[f"xaxis{i if i > 1 else ''}"].domain
            spec["colorbar"].update(x=domain[1] + 0.005, len=0.9, thickness=12)
        fig.layout[f"coloraxis{i if i > 1 else ''}"] = spec
    fig.update_layout(title=title, template=TEMPLATE)
    return fig


def _dtick(values, axis: int = 0) -> int:
    """Tick spacing that keeps about ten labelled layers (or heads) on an axis."""
    return max(1, as_array(values).shape[axis] // 10)


def spread_band(per_head) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the range (min, max) of a metric over heads, ignoring NaN."""
    arr = as_array(per_head)
    return np.nanmin(arr, axis=1), np.nanmax(arr, axis=1)


def layer_lines(
    series: Mapping[str, object],
    title: str,
    *,
    baselines: Mapping[str, object] | None = None,
    bands: Mapping[str, tuple] | None = None,
    y_title: str = "value",
    band_label: str = "range over heads",
) -> go.Figure:
    """Per-layer lines of a metric, with baselines as dashed lines and optional bands.

    ``series`` are the measured curves (solid). ``baselines`` are drawn broken: one named
    ``"untrained: <series>"`` dashed in its series' colour, others (e.g. ``"random"``) dotted.
    ``bands[name] = (low, high)`` shades a range around a series (e.g. its 95 % interval, or
    the spread over heads from :func:`spread_band`), named ``band_label`` in the legend.
    """
    fig = go.Figure()
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    for name, values in series.items():
        if bands and name in bands:
            fig.add_trace(_band(bands[name], colors[name], f"{name}: {band_label}"))
        fig.add_trace(_line(values, name, colors[name], dash="solid"))
    for i, (name, values) in enumerate((baselines or {}).items()):
        color, dash = _baseline_style(name, i, colors)
        fig.add_trace(_line(values, name, color, dash=dash))
    fig.add_hline(y=0, line={"color": "#cccccc", "width": 1})
    n_layers = max((len(as_array(v)) for v in series.values()), default=1)
    fig.update_layout(title=title, template=TEMPLATE, yaxis={"title": y_title},
                      xaxis={"title": "layer", "dtick": max(1, n_layers // 10)})
    return fig


def _baseline_style(name: str, i: int, colors: Mapping[str, str]) -> tuple[str, str]:
    """A baseline of one series (``"untrained: SimAM"``) takes its colour, dashed; others dotted."""
    for series_name, color in colors.items():
        if name.endswith(f": {series_name}"):
            return color, "dash"
    for key, color in BASELINE_COLORS.items():
        if key in name:
            return color, "dot"
    return PALETTE[(i + 3) % len(PALETTE)], "dot"


def _line(values, name: str, color: str, *, dash: str) -> go.Scatter:
    y = as_array(values)
    return go.Scatter(
        x=list(range(len(y))), y=y, name=name, mode="lines+markers",
        line={"color": color, "dash": dash}, marker={"size": 5},
        hovertemplate=f"{name}<br>layer %{{x}}<br>value %{{y:.4g}}<extra></extra>",
    )


def _band(band: tuple, color: str, name: str) -> go.Scatter:
    low, high = (as_array(b) for b in band)
    x = list(range(len(low)))
    return go.Scatter(
        x=x + x[::-1], y=np.concatenate([high, low[::-1]]), fill="toself", fillcolor=color,
        opacity=0.15, line={"width": 0}, name=name, hoverinfo="skip",
    )


def _bar_value(value) -> tuple[float | None, float | None, float | None]:
    """``(mean, +error, −error)`` of a number or an interval (anything with mean/low/high)."""
    if value is None:
        return None, None, None
    if hasattr(value, "low"):
        return value.mean, value.high - value.mean, value.mean - value.low
    return value, None, None


def grouped_bars(groups: Mapping[str, Mapping[str, object]], title: str, *,
                 y_title: str = "value", colors: Mapping[str, str] | None = None) -> go.Figure:
    """Bars of ``groups[x][series]`` (e.g. accuracy per task and condition); a value with
    ``mean``/``low``/``high`` (an :class:`~dualform.experiments.stats.Interval`) gets error bars."""
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    fig = go.Figure()
    for i, name in enumerate(series):
        y, plus, minus = zip(*(_bar_value(groups[x].get(name)) for x in groups), strict=True)
        errors = any(p is not None for p in plus)
        fig.add_bar(
            x=list(groups), y=list(y), name=name,
            error_y={"type": "data", "array": list(plus), "arrayminus": list(minus),
                     "visible": True} if errors else None,
            marker_color=(colors or {}).get(name, PALETTE[i % len(PALETTE)]),
            hovertemplate=f"{name}<br>%{{x}}<br>value %{{y:.4g}}<extra></extra>",
        )
    fig.update_layout(title=title, template=TEMPLATE, barmode="group", yaxis={"title": y_title})
    return fig
