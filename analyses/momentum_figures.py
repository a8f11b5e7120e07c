"""Momentum-attention figures: the trained twins and the inference-time η ablation.

    python analyses/momentum_figures.py --results runs/momentum   # figures from results.json
    python analyses/momentum_figures.py --ablation runs/momentum  # + SmolLM2 ICL accuracy vs η

* ``perplexity_vs_context`` — vanilla vs momentum perplexity per context length (mean ± std over
  seeds) next to the paper's numbers.
* ``icl_vs_eta_smollm2`` — ICL accuracy of the embedded pretrained SmolLM2-135M with the
  drop-in momentum attention switched on at η ∈ {0, 0.1, …, 0.9} (``ablation.json`` too).

Every figure is written as HTML and, when kaleido can render, PNG.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def save(fig: go.Figure, out: Path, name: str) -> list[str]:
    """Write ``name.html`` (always) and ``name.png`` (if kaleido works); return the files."""
    fig.write_html(out / f"{name}.html")
    written = [f"{name}.html"]
    try:
        fig.write_image(out / f"{name}.png", width=1000, height=450)
        written.append(f"{name}.png")
    except Exception as err:  # noqa: BLE001 — kaleido needs Chrome; the HTML is enough
        print(f"PNG export of {name} failed ({type(err).__name__}); kept the HTML.")
    return written


def perplexity_figure(results: dict) -> go.Figure:
    """Ours (mean ± std over seeds) and the paper's perplexity per context length."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("this run", "Dai et al. 2023 (350M)"))
    ctxs = list(results["summary"]["vanilla"]["perplexity"])
    for variant, dash in (("vanilla", "dot"), ("momentum", "solid")):
        stats = results["summary"][variant]["perplexity"]
        fig.add_trace(go.Scatter(
            x=[int(c) for c in ctxs], y=[stats[c]["mean"] for c in ctxs], name=variant,
            error_y={"type": "data", "array": [stats[c]["std"] for c in ctxs]},
            line={"dash": dash}, mode="lines+markers"), row=1, col=1)
        paper = results["paper"]
        fig.add_trace(go.Scatter(
            x=paper["context_lengths"], y=paper["perplexity"][variant],
            name=f"paper {variant}", line={"dash": dash}, mode="lines+markers"), row=1, col=2)
    fig.update_xaxes(title_text="context length", type="log")
    fig.update_yaxes(title_text="perplexity")
    return fig


def ablation_figure(ablation: dict) -> go.Figure:
    fig = go.Figure()
    for task, row in ablation["tasks"].items():
        etas = [float(e) for e in row["icl_accuracy"]]
        stats = list(row["icl_accuracy"].values())
        fig.add_trace(go.Scatter(
            x=etas, y=[s["mean"] for s in stats], error_y={"type": "data",
                                                           "array": [s["std"] for s in stats]},
            mode="lines+markers",
            name=f"{task} ICL (k={ablation['k']}, {len(ablation['demo_seeds'])} demo sets)"))
        fig.add_hline(y=row["zsl_accuracy_eta0"], line_dash="dot",
                      annotation_text=f"{task} zero-shot")
        fig.add_hline(y=row["chance"], line_dash="dash", line_color="grey")
    fig.update_layout(title="SmolLM2-135M: ICL accuracy with drop-in momentum attention",
                      xaxis_title="η (all layers, all heads)", yaxis_title="accuracy")
    return fig


def run_ablation(out: Path, n_queries: int, k: int) -> dict:
    from dualform.experiments.momentum.ablation import run_eta_ablation
    from dualform.models.load import load_model

    model = load_model("smollm2-135m", device="cpu")
    result = run_eta_ablation(model, k=k, n_queries=n_queries)
    tmp = out / ".ablation.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "ablation.json")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="directory with results.json")
    parser.add_argument("--ablation", type=Path, help="run the SmolLM2 η ablation into DIR")
    parser.add_argument("--n-queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.results:
        results = json.loads((args.results / "results.json").read_text())
        print("wrote", save(perplexity_figure(results), args.results, "perplexity_vs_context"))
    if args.ablation:
        args.ablation.mkdir(parents=True, exist_ok=True)
        ablation = run_ablation(args.ablation, args.n_queries, args.k)
        print(json.dumps(ablation, indent=2))
        print("wrote", save(ablation_figure(ablation), args.ablation, "icl_vs_eta_smollm2"))


if __name__ == "__main__":
    main()
