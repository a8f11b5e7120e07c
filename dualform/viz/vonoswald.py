"""Plotly figures for the regression experiment (HTML always, PNG through kaleido when it works)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from dualform.experiments.vonoswald.gd import gd_construction
from dualform.experiments.vonoswald.lsa import LSATransformer

_PNG_ERROR: list[str] = []  # first kaleido failure, so later figures skip the slow retry


def save_figure(fig: go.Figure, out_dir: str | Path, name: str, png: bool = True) -> dict:
    """Write ``name.html`` (plotly.js embedded) and try ``name.png``; returns paths / PNG error."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"{name}.html"
    fig.write_html(html, include_plotlyjs=True)
    record: dict = {"html": html.name, "png": None}
    if not png or _PNG_ERROR:
        record["png_error"] = _PNG_ERROR[0] if _PNG_ERROR else "disabled"
        return record
    try:
        fig.write_image(out_dir / f"{name}.png", scale=2)
        record["png"] = f"{name}.png"
    except Exception as exc:  # kaleido ≥ 1 needs Chrome; fall back to HTML only
        _PNG_ERROR.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
        record["png_error"] = _PNG_ERROR[0]
    return record


def loss_bars_figure(table: list[dict]) -> go.Figure:
    """Grouped bars: test loss per number of steps/layers for GD, GD++, trained LSA, paper."""
    fig = go.Figure()
    steps = [str(row["steps"]) for row in table]
    for key, label in (
        ("gd", "GD (tuned η)"),
        ("gdpp", "GD++"),
        ("lsa", "trained LSA"),
        ("paper", "paper (GD)"),
    ):
        values = [row.get(key) for row in table]
        fig.add_bar(
            x=steps,
            y=values,
            name=label,
            text=[f"{v:.3f}" if v else "" for v in values],
            textposition="outside",
            textangle=0,
        )
    fig.update_layout(
        title="In-context linear regression: test loss (½·MSE)",
        barmode="group",
        xaxis_title="GD steps = LSA layers",
        yaxis_title="loss",
        template="plotly_white",
    )
    return fig


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def training_curves_figure(
    curves: dict[int, tuple[list[int], list[float]]], gd: dict[int, float]
) -> go.Figure:
    """Training loss of each LSA depth, with its K-step GD test loss as a dashed line."""
    fig = go.Figure()
    for i, (layers, (steps, losses)) in enumerate(sorted(curves.items())):
        color = PALETTE[i % len(PALETTE)]
        fig.add_scatter(x=steps, y=losses, name=f"LSA {layers} layer(s)", line={"color": color})
        if layers in gd:
            fig.add_scatter(
                x=[0, max(steps)],
                y=[gd[layers]] * 2,
                name=f"GD {layers} step(s)",
                mode="lines",
                line={"color": color, "dash": "dash"},
            )
    fig.update_layout(
        title="Training loss vs tuned GD",
        xaxis_title="Adam step",
        yaxis_title="½·MSE",
        yaxis_type="log",
        template="plotly_white",
    )
    return fig


def ood_figure(alphas: list[float], curves: dict[str, list[float]]) -> go.Figure:
    """Test loss when the input range is scaled by α (trained on α = 1); one colour per depth."""
    fig = go.Figure()
    depth_of = lambda name: int("".join(c for c in name.split()[1] if c.isdigit()))  # noqa: E731
    depths = sorted({depth_of(name) for name in curves})
    for name, losses in curves.items():
        depth = depths.index(depth_of(name))
        dash = "dash" if name.startswith("GD") else "solid"
        line = {"dash": dash, "color": PALETTE[depth % len(PALETTE)]}
        fig.add_scatter(x=alphas, y=losses, name=name, line=line)
    fig.add_vline(x=1.0, line={"color": "grey", "dash": "dot"})
    fig.update_layout(
        title="Out of distribution: x ~ U(−α·r, α·r), η and weights fixed at α = 1",
        xaxis_title="α",
        yaxis_title="½·MSE",
        yaxis_type="log",
        template="plotly_white",
    )
    return fig


def normalised_products(model: LSATransformer, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-summed ``(W_K^T W_Q, P W_V)`` rescaled so that the x-block of W_K^T W_Q has mean diag 1.

    The product of the two is invariant to this rescaling (official ``interpolate_weights``).
    """
    kq, pv = (t.sum(0).double().cpu() for t in model.paper_products(layer))
    d = kq.shape[0] - 1
    scale = kq[:d, :d].diagonal().mean()
    return kq / scale, pv * scale


def weights_figure(model: LSATransformer, eta: float, n: int, layer: int = 0) -> go.Figure:
    """Heatmaps of the trained layer's ``W_K^T W_Q`` and ``P W_V`` next to the GD construction."""
    kq, pv = normalised_products(model, layer)
    d = kq.shape[0] - 1
    c = gd_construction(d, eta, n)
    mats = [kq, pv, c["W_K"].T @ c["W_Q"], c["P"] @ c["W_V"]]
    titles = [
        "trained W_Kᵀ W_Q",
        "trained P W_V",
        "construction W_Kᵀ W_Q",
        "construction P W_V (η/N)",
    ]
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.12)
    for i, mat in enumerate(mats):
        zmax = float(mat.abs().max()) or 1.0
        fig.add_heatmap(
            z=mat.numpy(),
            row=i // 2 + 1,
            col=i % 2 + 1,
            colorscale="RdBu",
            zmid=0,
            zmin=-zmax,
            zmax=zmax,
            showscale=False,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=f"Layer {layer} weights: trained LSA vs GD construction (η = {eta:.2f})",
        template="plotly_white",
        height=750,
        width=800,
    )
    return fig


def dual_figure(
    trained: dict, constructed: dict, gd_model: torch.Tensor, task: int = 0
) -> go.Figure:
    """Dai's meta-gradient ΔW_ICL (left two) and the implied linear models vs GD (right)."""
    d = gd_model.shape[-1]
    titles = [
        "trained 1-layer LSA: M = P·ΔW_ICL·W_Q",
        "construction: M = P·ΔW_ICL·W_Q",
        "implied model vs W0 − η∇L",
    ]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.08)
    for col, res in ((1, trained), (2, constructed)):
        mat = res["matrix"][task].double().cpu()
        zmax = float(mat.abs().max()) or 1.0
        fig.add_heatmap(
            z=mat.numpy(),
            row=1,
            col=col,
            colorscale="RdBu",
            zmid=0,
            zmin=-zmax,
            zmax=zmax,
            showscale=False,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=col)
    coords = list(range(d))
    for res, name, mode in (
        (constructed, "construction", "markers"),
        (trained, "trained LSA", "markers"),
    ):
        fig.add_scatter(
            x=coords,
            y=res["implied_model"][task].cpu().tolist(),
            mode=mode,
            name=name,
            row=1,
            col=3,
            marker={"size": 10 if name == "construction" else 7},
        )
    fig.add_scatter(
        x=coords, y=gd_model[task].cpu().tolist(), mode="lines", name="GD: W0 − η∇L", row=1, col=3
    )
    fig.update_xaxes(title_text="coordinate of w", row=1, col=3)
    fig.update_layout(
        title="Query update = P·ΔW_ICL·q (Dai's dual form) = one GD step (von Oswald)",
        template="plotly_white",
        height=450,
        width=1300,
    )
    return fig
