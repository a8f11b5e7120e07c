"""Plotly figures for dualform results; every function returns a ``plotly.graph_objects.Figure``.

* :func:`head_heatmap` / :func:`head_heatmaps` — layer×head maps of any per-head metric
  (SimAOU of z, SimAM, attribution effects, ‖ΔW_ICL‖, cos(ΔW_ICL q, Δz_FT), …), heads whose
  interval excludes 0 marked;
* :func:`layer_lines` — per-layer curves with random / untrained baselines dashed and the
  95 % interval (over seeds and test examples) as a band;
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

from dualform.experiments.dai import metric_names as N
from dualform.experiments.dai import results as R
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


def task_label(task: str, t: R.TaskResult) -> str:
    """The task's name on an axis, marked when its finetuning diverged (no FT numbers)."""
    return f"{task} (FT diverged)" if t.ft_diverged() else task


def accuracy_figure(results: R.DaiResults) -> go.Figure:
    """Accuracy of ZSL / ICL / FT per task, with 95 % intervals over seeds and examples."""
    names = {"zsl": "ZSL", "icl": "ICL", "ft": "FT"}
    groups = {task_label(task, t): {names[c]: t.intervals.get(N.ACCURACY[c]) for c in names}
              for task, t in results.tasks.items()}
    colors = {names[c]: color for c, color in CONDITION_COLORS.items()}
    return grouped_bars(groups, f"Accuracy ({results.model})", y_title="accuracy %",
                        colors=colors)


#: Headline metrics of the overview: label → metric name.
HEADLINE = {
    "SimAOU": N.SIMAOU, "SimAOU (z, per head)": N.SIMAOU_Z, "SimAM before": N.SIMAM_BEFORE,
    "SimAM after": N.SIMAM_AFTER, "SimAM_Δ": N.SIMAM_DELTA, "Kendall": N.KENDALL,
    "cos(ΔW_ICL q, Δz_FT)": N.COS_ICL_FT,
}


def overview_figure(results: R.DaiResults) -> go.Figure:
    """Headline metrics per task, pooled untrained model and random baselines, with intervals."""
    groups: dict[str, dict] = {label: {} for label in HEADLINE}
    for label, name in HEADLINE.items():
        for task, t in results.tasks.items():
            groups[label][task_label(task, t)] = t.intervals.get(name)
        groups[label]["untrained (pooled)"] = results.pooled_untrained.get(name)
        if name in N.RANDOM_BASELINES:
            groups[label]["random (pooled)"] = results.pooled.get(N.RANDOM_BASELINES[name])
    return grouped_bars(groups, f"Headline metrics ({results.model}), 95 % intervals")


def _lines(t: R.TaskResult, title: str, parts: dict[str, str], baselines: dict[str, str],
           y_title: str) -> go.Figure | None:
    series = {n: [i.mean for i in t.intervals.per_layer[m]] for n, m in parts.items()
              if m in t.intervals.per_layer}
    if not series:
        return None
    bands = {n: ([i.low for i in t.intervals.per_layer[m]], [i.high for i in t.intervals.per_layer[m]])
             for n, m in parts.items() if m in t.intervals.per_layer}
    base = {n: t.per_layer_mean(m) for n, m in baselines.items()}
    base.update({f"untrained: {n}": t.per_layer_mean(m, untrained=True) for n, m in parts.items()})
    base = {n: v for n, v in base.items() if v is not None}
    return layer_lines(series, title, baselines=base, bands=bands, y_title=y_title,
                       band_label="95 % interval")


LINE_FIGURES: dict[str, tuple[str, dict[str, str], dict[str, str], str]] = {
    "simaou_layers": ("SimAOU per layer", {
        "SimAOU": N.SIMAOU, "SimAOU unnorm.": N.SIMAOU_UNNORM, "SimAOU of z (per head)": N.SIMAOU_Z},
        {"random": N.SIMAOU_RANDOM}, "similarity"),
    "simam_layers": ("SimAM per layer (before: ICL vs ZSL, after: ICL vs FT)", {
        "SimAM before": N.SIMAM_BEFORE, "SimAM after": N.SIMAM_AFTER}, {}, "similarity"),
    "simam_delta_layers": ("SimAM_Δ per layer", {"SimAM_Δ": N.SIMAM_DELTA}, {}, "SimAM_Δ"),
    "kendall_layers": ("Kendall τ per layer", {
        "Kendall": N.KENDALL, "Kendall (example level)": N.KENDALL_EXAMPLE},
        {"random": N.KENDALL_RANDOM, "random (example level)": N.KENDALL_EXAMPLE_RANDOM}, "τ"),
    "recall_layers": ("Top-k recall per layer (top-100 tokens, top-5 demonstrations)", {
        "top-100 tokens": N.TOPK_TOKEN, "top-5 demonstrations": N.TOPK_EXAMPLE},
        {"random top-100": N.TOPK_TOKEN_RANDOM, "random top-5": N.TOPK_EXAMPLE_RANDOM}, "recall"),
    "cos_layers": ("cos(ΔW_ICL q, Δz_FT) per layer", {"cos": N.COS_ICL_FT}, {}, "cosine"),
}
MARK_NOTE = "○: 95 % interval excludes 0"


def _head_maps(t: R.TaskResult, title: Callable[[str], str]) -> dict[str, go.Figure]:
    figs: dict[str, go.Figure] = {}
    marks = t.intervals.head_distinct
    if (z := t.per_head_mean(N.SIMAOU_Z)) is not None:
        figs["heads_simaou_z"] = head_heatmap(z, title(f"SimAOU of z per head ({MARK_NOTE})"),
                                              colorbar="SimAOU", marks=marks.get(N.SIMAOU_Z))
    simam = {"before": N.SIMAM_BEFORE, "after": N.SIMAM_AFTER, "Δ": N.SIMAM_DELTA}
    maps = {n: t.per_head_mean(m) for n, m in simam.items()}
    if all(v is not None for v in maps.values()):
        figs["heads_simam"] = head_heatmaps(maps, title(f"SimAM per head ({MARK_NOTE})"),
                                            shared_scale=False,
                                            marks={n: marks.get(m) for n, m in simam.items()})
    if (attr := t.attribution) is not None:
        label = f" (Spearman ρ = {attr.spearman:.2f})" if attr.spearman is not None else ""
        figs["heads_attribution"] = head_heatmaps(
            {"ICL effect": attr.icl, "FT effect": attr.ft},
            title(f"Head attribution{label}, {attr.n_examples} examples ({MARK_NOTE})"),
            shared_scale=False, colorbar="Δ logit diff",
            marks={"ICL effect": attr.icl_distinct, "FT effect": attr.ft_distinct})
    figs.update(_dual_maps(t, title))
    return figs


def _dual_maps(t: R.TaskResult, title: Callable[[str], str]) -> dict[str, go.Figure]:
    figs = {}
    icl, zsl = t.mean_map("norm_delta_w_icl"), t.mean_map("norm_w_zsl")
    if icl is not None and zsl is not None:
        icl, zsl = as_array(icl), as_array(zsl)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = icl / zsl
        maps = {"‖ΔW_ICL‖": icl, "‖W_ZSL‖": zsl, "‖ΔW_ICL‖ / ‖W_ZSL‖": ratio}
        figs["heads_norms"] = head_heatmaps(maps, title("Frobenius norms per head"),
                                            diverging=False, shared_scale=False)
    if (cos := t.per_head_mean(N.COS_ICL_FT)) is not None:
        figs["heads_cos"] = head_heatmap(cos, title(f"cos(ΔW_ICL q, Δz_FT) per head ({MARK_NOTE})"),
                                         colorbar="cosine",
                                         marks=t.intervals.head_distinct.get(N.COS_ICL_FT))
    return figs


def task_figures(task: str, t: R.TaskResult, model: str = "") -> dict[str, go.Figure]:
    """Per-layer lines (with interval bands) and layer×head maps of one task's results."""
    suffix = f"<br><sup>{task_label(task, t)}" + (f" ({model})" if model else "") + "</sup>"

    def title(text: str) -> str:
        return text + suffix

    figs: dict[str, go.Figure] = {}
    for key, (name, parts, baselines, y_title) in LINE_FIGURES.items():
        fig = _lines(t, title(name), parts, baselines, y_title)
        if fig is not None:
            figs[key] = fig
    figs.update(_head_maps(t, title))
    return figs


def figures_from_results(results: R.DaiResults) -> dict[str, go.Figure]:
    """Every figure of a ``results.json`` from ``dualform reproduce dai``.

    Keys: ``"accuracy"``, ``"overview"``, then ``"{task}/{figure}"`` with figure one of
    ``simaou_layers``, ``simam_layers``, ``simam_delta_layers``, ``kendall_layers``, ``recall_layers``,
    ``cos_layers``, ``heads_simaou_z``, ``heads_simam``, ``heads_attribution``, ``heads_norms``,
    ``heads_cos`` (those whose data the results hold).
    """
    figs = {"accuracy": accuracy_figure(results), "overview": overview_figure(results)}
    for task, t in results.tasks.items():
        figs.update({f"{task}/{k}": f for k, f in task_figures(task, t, results.model).items()})
    return figs
