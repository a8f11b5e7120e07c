"""Plotly figures for dualform results; every function returns a ``plotly.graph_objects.Figure``.

* :func:`head_heatmap` / :func:`head_heatmaps` — layer×head maps of any per-head metric
  (SimAOU of z, SimAM, attribution effects, ‖ΔW_ICL‖, cos(ΔW_ICL q, Δz_FT), …);
* :func:`layer_lines` — per-layer curves with random / untrained baselines dashed and the
  spread over heads as a band;
* :func:`spectrum_figure` — singular values of ΔW_ICL vs ΔW_V / ΔW_K of finetuning for one head
  (see :mod:`dualform.viz.spectra` for exactly what is compared);
* :func:`demo_attention_figure` — last-token attention under ICL vs ZSL vs FT, and
  :func:`attention_views` — the same patterns as offline circuitsvis views;
* :func:`figures_from_results` — every figure of a ``results.json`` of ``reproduce dai``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go

from dualform.viz.attention import (
    AttentionExample,
    OfflineHTML,
    attention_views,
    attention_views_html,
    circuitsvis_library,
    circuitsvis_script,
    demo_attention_figure,
    demo_mass_heatmap,
)
from dualform.viz.maps import (
    CONDITION_COLORS,
    as_array,
    grouped_bars,
    head_heatmap,
    head_heatmaps,
    layer_lines,
    spread_band,
)
from dualform.viz.spectra import effective_rank, spectra_figure, spectrum_figure

__all__ = [
    "AttentionExample",
    "OfflineHTML",
    "accuracy_figure",
    "as_array",
    "attention_views",
    "attention_views_html",
    "circuitsvis_library",
    "circuitsvis_script",
    "demo_attention_figure",
    "demo_mass_heatmap",
    "effective_rank",
    "figures_from_results",
    "grouped_bars",
    "head_heatmap",
    "head_heatmaps",
    "layer_lines",
    "overview_figure",
    "spectra_figure",
    "spectrum_figure",
    "spread_band",
    "task_figures",
]


def get(data: dict | None, *path: str):
    """``data[path[0]][path[1]]…`` or ``None`` when any key is missing."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def task_label(task: str, t: dict) -> str:
    """The task's name on an axis, marked when its finetuning diverged (no FT numbers)."""
    return f"{task} (FT diverged)" if t.get("ft_diverged") else task


def accuracy_figure(results: dict) -> go.Figure:
    """Accuracy of ZSL / ICL / FT per task."""
    names = {"zsl": "ZSL", "icl": "ICL", "ft": "FT"}
    groups = {task_label(task, t): {names[c]: t["accuracy"].get(c) for c in names}
              for task, t in results["tasks"].items() if "accuracy" in t}
    colors = {names[c]: color for c, color in CONDITION_COLORS.items()}
    return grouped_bars(groups, f"Accuracy ({results['config']['model']})", y_title="accuracy %",
                        colors=colors)


#: Headline numbers of a task: label → path of the ``mean`` in a task's results.
HEADLINE = {
    "SimAOU": ("simaou", "normalized", "mean"),
    "SimAOU (z, per head)": ("simaou", "per_head_z", "mean"),
    "SimAM before": ("simam", "before", "mean"),
    "SimAM after": ("simam", "after", "mean"),
    "SimAM_Δ": ("simam", "delta", "mean"),
    "Kendall": ("kendall", "value", "mean"),
    "cos(ΔW_ICL q, Δz_FT)": ("dual_form", "cos_icl_update_ft", "mean"),
}
RANDOM = {"SimAOU": ("simaou", "random", "mean"), "Kendall": ("kendall", "random", "mean")}


def overview_figure(results: dict) -> go.Figure:
    """Headline metrics per task, with the untrained model and random baselines (task means)."""
    groups: dict[str, dict[str, float | None]] = {label: {} for label in HEADLINE}
    tasks = results["tasks"]
    for label, path in HEADLINE.items():
        for task, t in tasks.items():
            groups[label][task_label(task, t)] = get(t, *path)
        groups[label]["untrained (task mean)"] = _mean(get(t.get("untrained"), *path)
                                                       for t in tasks.values())
        if label in RANDOM:
            groups[label]["random (task mean)"] = _mean(get(t, *RANDOM[label]) for t in tasks.values())
    return grouped_bars(groups, f"Headline metrics ({results['config']['model']})")


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _summary_line(name: str, summary: dict | None, series: dict, bands: dict) -> None:
    if summary is None:
        return
    series[name] = summary["per_layer"]
    if "per_head" in summary:
        bands[name] = spread_band(summary["per_head"])


def _lines(t: dict, title: str, parts: dict[str, tuple], baselines: dict[str, tuple],
           y_title: str) -> go.Figure | None:
    series: dict = {}
    bands: dict = {}
    for name, path in parts.items():
        _summary_line(name, get(t, *path), series, bands)
    if not series:
        return None
    base = {name: get(t, *path, "per_layer") for name, path in baselines.items()}
    base.update({f"untrained: {n}": get(t.get("untrained"), *p, "per_layer")
                 for n, p in parts.items()})
    base = {n: v for n, v in base.items() if v is not None}
    return layer_lines(series, title, baselines=base, bands=bands, y_title=y_title)


LINE_FIGURES: dict[str, tuple[str, dict[str, tuple], dict[str, tuple], str]] = {
    "simaou_layers": ("SimAOU per layer", {
        "SimAOU": ("simaou", "normalized"), "SimAOU unnorm.": ("simaou", "unnormalized"),
        "SimAOU of z (per head)": ("simaou", "per_head_z")},
        {"random": ("simaou", "random")}, "similarity"),
    "simam_layers": ("SimAM per layer (before: ICL vs ZSL, after: ICL vs FT)", {
        "SimAM before": ("simam", "before"), "SimAM after": ("simam", "after")}, {}, "similarity"),
    "simam_delta_layers": ("SimAM_Δ per layer", {"SimAM_Δ": ("simam", "delta")}, {}, "SimAM_Δ"),
    "kendall_layers": ("Kendall τ per layer", {
        "Kendall": ("kendall", "value"), "Kendall (example level)": ("kendall", "example")},
        {"random": ("kendall", "random"), "random (example level)": ("kendall", "example_random")},
        "τ"),
    "recall_layers": ("Top-k recall per layer (top-100 tokens, top-5 demonstrations)", {
        "top-100 tokens": ("topk_recall", "token", "value"),
        "top-5 demonstrations": ("topk_recall", "example", "value")},
        {"random top-100": ("topk_recall", "token", "random"),
         "random top-5": ("topk_recall", "example", "random")}, "recall"),
    "cos_layers": ("cos(ΔW_ICL q, Δz_FT) per layer", {
        "cos": ("dual_form", "cos_icl_update_ft")}, {}, "cosine"),
}


def _head_maps(t: dict, title: Callable[[str], str]) -> dict[str, go.Figure]:
    figs: dict[str, go.Figure] = {}
    if (z := get(t, "simaou", "per_head_z", "per_head")) is not None:
        figs["heads_simaou_z"] = head_heatmap(z, title("SimAOU of z per head"), colorbar="SimAOU")
    simam = {n: get(t, "simam", k, "per_head") for n, k in
             (("before", "before"), ("after", "after"), ("Δ", "delta"))}
    if all(v is not None for v in simam.values()):
        figs["heads_simam"] = head_heatmaps(simam, title("SimAM per head"), shared_scale=False)
    if (attr := t.get("attribution")) is not None:
        rho = attr.get("spearman")
        label = f" (Spearman ρ = {rho:.2f})" if rho is not None else ""
        figs["heads_attribution"] = head_heatmaps(
            {"ICL effect": attr["icl"], "FT effect": attr["ft"]},
            title(f"Head attribution{label}"), shared_scale=False, colorbar="Δ logit diff")
    if (dual := t.get("dual_form")) is not None:
        figs.update(_dual_maps(dual, title))
    return figs


def _dual_maps(dual: dict, title: Callable[[str], str]) -> dict[str, go.Figure]:
    figs = {}
    if "norm_delta_w_icl" in dual and "norm_w_zsl" in dual:
        icl, zsl = as_array(dual["norm_delta_w_icl"]), as_array(dual["norm_w_zsl"])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = icl / zsl
        maps = {"‖ΔW_ICL‖": icl, "‖W_ZSL‖": zsl, "‖ΔW_ICL‖ / ‖W_ZSL‖": ratio}
        figs["heads_norms"] = head_heatmaps(maps, title("Frobenius norms per head"),
                                            diverging=False, shared_scale=False)
    if (cos := get(dual, "cos_icl_update_ft", "per_head")) is not None:
        figs["heads_cos"] = head_heatmap(cos, title("cos(ΔW_ICL q, Δz_FT) per head"),
                                         colorbar="cosine")
    return figs


def task_figures(task: str, t: dict, model: str = "") -> dict[str, go.Figure]:
    """Per-layer lines and layer×head maps of one task's results."""
    suffix = (f"<br><sup>{task_label(task, t)}" + (f" ({model})" if model else "") + "</sup>")

    def title(text: str) -> str:
        return text + suffix

    figs: dict[str, go.Figure] = {}
    for key, (name, parts, baselines, y_title) in LINE_FIGURES.items():
        fig = _lines(t, title(name), parts, baselines, y_title)
        if fig is not None:
            figs[key] = fig
    figs.update(_head_maps(t, title))
    return figs


def figures_from_results(results: dict) -> dict[str, go.Figure]:
    """Every figure of a ``results.json`` from ``dualform reproduce dai``.

    Keys: ``"accuracy"``, ``"overview"``, then ``"{task}/{figure}"`` with figure one of
    ``simaou_layers``, ``simam_layers``, ``simam_delta_layers``, ``kendall_layers``, ``recall_layers``,
    ``cos_layers``, ``heads_simaou_z``, ``heads_simam``, ``heads_attribution``, ``heads_norms``,
    ``heads_cos`` (those whose data the results hold).
    """
    figs = {"accuracy": accuracy_figure(results), "overview": overview_figure(results)}
    model = results.get("config", {}).get("model", "")
    for task, t in results["tasks"].items():
        figs.update({f"{task}/{k}": f for k, f in task_figures(task, t, model).items()})
    return figs
