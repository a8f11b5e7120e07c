"""Momentum-attention figures: the trained twins and the inference-time η ablation.

    python analyses/momentum_figures.py --results runs/momentum   # figures + README table
    python analyses/momentum_figures.py --ablation runs/momentum  # + SmolLM2 ICL accuracy vs η

* the README's markdown table (:func:`dualform.viz.momentum.markdown_table`) and the verdict;
* every figure of :func:`dualform.viz.momentum.write_figures` (loss curves, η sweep,
  perplexity vs context with 95 % intervals, paired momentum − vanilla differences);
* ``icl_vs_eta_smollm2`` — ICL accuracy of the embedded pretrained SmolLM2-135M with the
  drop-in momentum attention switched on at η ∈ {0, 0.1, …, 0.9} (``ablation.json`` too).

Every figure is written as HTML and, when kaleido can render, PNG.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dualform.infra.io import read_json, write_json_atomic
from dualform.viz.momentum import ablation_figure, markdown_table, write_figures
from dualform.viz.vonoswald import save_figure


def run_ablation(out: Path, n_queries: int, k: int) -> dict:
    from dualform.experiments.momentum.ablation import run_eta_ablation
    from dualform.models.load import load_model

    model = load_model("smollm2-135m", device="cpu")
    result = run_eta_ablation(model, k=k, n_queries=n_queries)
    write_json_atomic(out / "ablation.json", result)
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
        results = read_json(args.results / "results.json")
        print(markdown_table(results), "", results["verdict"]["text"], "", sep="\n")
        print("wrote", write_figures(args.results, results))
    if args.ablation:
        args.ablation.mkdir(parents=True, exist_ok=True)
        ablation = run_ablation(args.ablation, args.n_queries, args.k)
        print(json.dumps(ablation, indent=2))
        print("wrote", save_figure(ablation_figure(ablation), args.ablation, "icl_vs_eta_smollm2"))


if __name__ == "__main__":
    main()
