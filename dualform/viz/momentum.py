"""Figures of the momentum experiment; they read ``results.json`` / ``ablation.json`` only.

* :func:`loss_curves_figure` — training loss of every run (moving average).
* :func:`eta_sweep_figure` — ICL accuracy and perplexity against η at the first seed.
* :func:`perplexity_figure` — vanilla vs momentum perplexity per context length (mean and 95 %
  interval over seeds) next to the paper's numbers.
* :func:`paired_figure` — the paired ``momentum − vanilla`` differences with their intervals,
  over all seeds and over the seeds where both twins learned.
* :func:`ablation_figure` — SmolLM2 ICL accuracy against the inference-time η.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dualform.viz.vonoswald import save_figure


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average ``s_t = mean(x_{t−w+1..t})``."""
    out, total = [], 0.0
    for i, x in enumerate(values):
        total += x
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves_figure(results: dict) -> go.Figure:
    """Every run's loss curve (``loss_curve``: every 10th step), smoothed."""
    fig = go.Figure()
    for run in results["runs"]:
        curve = run["loss_curve"]
        dash = "solid" if run["variant"] == "momentum" else "dot"
        fig.add_trace(go.Scatter(
            x=[10 * i for i in range(len(curve))], y=smooth(curve, max(1, len(curve) // 50)),
            name=f"{run['variant']} η={run['eta']:g} seed {run['seed']}", line={"dash": dash},
        ))
    fig.update_layout(title="Training loss (moving average)", xaxis_title="step",
                      yaxis_title="cross-entropy (nats)")
    return fig


def eta_sweep_figure(sweep: list[dict]) -> go.Figure:
    """ICL accuracy and perplexity (every context) against η, first seed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean ICL accuracy", "test perplexity"))
    etas = [row["eta"] for row in sweep]
    fig.add_trace(go.Scatter(x=etas, y=[row["icl_mean"] for row in sweep], mode="lines+markers",
                             name="ICL accuracy"), row=1, col=1)
    for ctx in sweep[0]["perplexity"]:
        fig.add_trace(go.Scatter(x=etas, y=[row["perplexity"][ctx] for row in sweep],
                                 mode="lines+markers", name=f"perplexity @ {ctx}"), row=1, col=2)
    fig.update_xaxes(title_text="η (0 = vanilla)")
    fig.update_layout(title="η sweep (first seed)")
    return fig


def _error_bars(stats: list[dict]) -> dict:
    """Plotly asymmetric error bars from ``{"mean", "ci": {"low", "high"}}`` entries."""
    return {
        "type": "data", "symmetric": False,
        "array": [s["ci"]["high"] - s["mean"] for s in stats],
        "arrayminus": [s["mean"] - s["ci"]["low"] for s in stats],
    }


def perplexity_figure(results: dict) -> go.Figure:
    """Ours (mean and 95 % bootstrap interval over seeds) and the paper's, per context length."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("this run", "Dai et al. 2023 (350M)"))
    ctxs = list(results["summary"]["vanilla"]["perplexity"])
    for variant, dash in (("vanilla", "dot"), ("momentum", "solid")):
        stats = [results["summary"][variant]["perplexity"][c] for c in ctxs]
        fig.add_trace(go.Scatter(
            x=[int(c) for c in ctxs], y=[s["mean"] for s in stats], name=variant,
            error_y=_error_bars(stats), line={"dash": dash}, mode="lines+markers"), row=1, col=1)
        paper = results["paper"]
        fig.add_trace(go.Scatter(
            x=paper["context_lengths"], y=paper["perplexity"][variant],
            name=f"paper {variant}", line={"dash": dash}, mode="lines+markers"), row=1, col=2)
    fig.update_xaxes(title_text="context length", type="log", tickvals=[int(c) for c in ctxs],
                     row=1, col=1)
    fig.update_xaxes(title_text="context length", type="log",
                     tickvals=results["paper"]["context_lengths"], row=1, col=2)
    fig.update_yaxes(title_text="perplexity")
    fig.update_layout(width=1000, height=450,
                      title="Perplexity per context length (mean and 95 % interval over seeds)")
    return fig


def paired_figure(results: dict) -> go.Figure:
    """``momentum − vanilla`` (same seed) with 95 % intervals: perplexity per context, ICL."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Δ perplexity (< 0: momentum better)",
                                                        "Δ ICL accuracy (> 0: momentum better)"))
    for subset, name, color in (("all_seeds", "all seeds", "#1f77b4"),
                                ("both_learned", "both learned", "#d62728")):
        deltas = results["paired"][subset]
        if not deltas["seeds"]:
            continue
        label = f"{name} (n = {len(deltas['seeds'])})"
        ctxs = list(deltas["perplexity"])
        for col, (xs, stats) in enumerate(
            ((ctxs, [deltas["perplexity"][c] for c in ctxs]), (["ICL"], [deltas["icl_mean"]])),
            start=1,
        ):
            fig.add_trace(go.Scatter(
                x=xs, y=[s["mean"] for s in stats], mode="markers", name=label,
                legendgroup=subset, showlegend=col == 1, marker={"color": color},
                error_y=_error_bars([{"mean": s["mean"], "ci": s} for s in stats]),
            ), row=1, col=col)
    fig.add_hline(y=0.0, line_dash="dash", line_color="grey")
    fig.update_xaxes(title_text="context length", type="category", row=1, col=1)
    fig.update_layout(title="Momentum − vanilla, paired by seed (95 % bootstrap intervals)",
                      width=1000, height=450)
    return fig


def ablation_figure(ablation: dict) -> go.Figure:
    """SmolLM2 ICL accuracy (mean ± std over demonstration sets) against the drop-in η."""
    fig = go.Figure()
    for task, row in ablation["tasks"].items():
        etas = [float(e) for e in row["icl_accuracy"]]
        stats = list(row["icl_accuracy"].values())
        fig.add_trace(go.Scatter(
            x=etas, y=[s["mean"] for s in stats],
            error_y={"type": "data", "array": [s["std"] for s in stats]}, mode="lines+markers",
            name=f"{task} ICL (k={ablation['k']}, {len(ablation['demo_seeds'])} demo sets)"))
        fig.add_hline(y=row["zsl_accuracy_eta0"], line_dash="dot",
                      annotation_text=f"{task} zero-shot")
        fig.add_hline(y=row["chance"], line_dash="dash", line_color="grey")
    fig.update_layout(title="SmolLM2-135M: ICL accuracy with drop-in momentum attention",
                      xaxis_title="η (all layers, all heads)", yaxis_title="accuracy")
    return fig


def write_figures(out: str | Path, results: dict, png: bool = True) -> dict:
    """Every figure of a momentum ``results`` dict as HTML (and PNG when kaleido can render)."""
    figures = {
        "loss_curves": loss_curves_figure(results),
        "eta_sweep": eta_sweep_figure(results["eta_sweep"]),
        "perplexity_vs_context": perplexity_figure(results),
        "paired_differences": paired_figure(results),
    }
    return {name: save_figure(fig, out, name, png=png) for name, fig in figures.items()}


def _ci(stat: dict, digits: int = 3) -> str:
    """``mean [low, high]`` of a ``{"mean", "ci"}`` entry or of an interval ``{"mean", "low", "high"}``."""
    interval = stat.get("ci", stat)
    return (f"{stat['mean']:.{digits}f} [{interval['low']:.{digits}f}, "
            f"{interval['high']:.{digits}f}]")


def summary_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table: per arm, the paired differences, the paper."""
    ctxs = list(results["summary"]["vanilla"]["perplexity"])
    header = ["", *(f"ppl @{c}" for c in ctxs), "ICL acc", "failed"]
    eta = results["eta_selection"]["eta"]
    rows = []
    for arm in ("vanilla", "momentum"):
        table = results["summary"][arm]
        failure = table["failure"]
        rows.append([
            arm if arm == "vanilla" else f"momentum (η = {eta:g})",
            *(_ci(table["perplexity"][c]) for c in ctxs), _ci(table["icl_mean"]),
            f"{failure['failed']}/{failure['n']} ({_ci(failure, 2)})",
        ])
    failure = results["paired"]["failure"]
    for subset, label in (("all_seeds", "all seeds"), ("both_learned", "both learned")):
        deltas = results["paired"][subset]
        name = f"momentum − vanilla, {label} (n = {len(deltas['seeds'])})"
        if not deltas["seeds"]:
            rows.append([name, *("–" for _ in ctxs), "–", "–"])
            continue
        rows.append([
            name, *(_ci(deltas["perplexity"][c]) for c in ctxs), _ci(deltas["icl_mean"]),
            _ci(failure, 2) if subset == "all_seeds" else "–",
        ])
    paper = results["paper"]
    ppl = [f"{v:.2f} → {m:.2f}" for v, m in zip(paper["perplexity"]["vanilla"],
                                                 paper["perplexity"]["momentum"], strict=True)]
    rows.append([
        "paper, 350M (" + "/".join(str(c) for c in paper["context_lengths"]) + ")",
        *(ppl + ["–"] * len(ctxs))[: len(ctxs)],
        f"{paper['icl_accuracy']['vanilla']:.3f} → {paper['icl_accuracy']['momentum']:.3f}", "–",
    ])
    return header, rows


def markdown_table(results: dict) -> str:
    """:func:`summary_rows` as a markdown table (the README's)."""
    header, rows = summary_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
