"""PNG figures for the README from a `dualform reproduce dai` results directory (kaleido).

Usage::

    python analyses/readme_figures.py results/dai docs/figures
    python analyses/readme_figures.py results/dai docs/figures --task vader-valence --no-attention

kaleido ≥ 1 renders through a Chrome/Chromium it finds on ``PATH`` (``chromium`` counts) or at
``$BROWSER_PATH``; offline, ``kaleido.get_chrome`` / ``plotly_get_chrome`` cannot download one,
so install the distribution's package (Debian/Ubuntu: ``apt-get install -y chromium``). This
script sets ``BROWSER_PATH`` to the Chromium it finds when it is unset. plotly.js comes from the
plotly package (no CDN); all figures are exported with one browser session.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from dualform.experiments.dai.attention import AttentionExample, read_attention
from dualform.experiments.dai.results import DaiResults
from dualform.viz.figures import demo_attention_figure, figures_from_results, spectra_figure
from dualform.viz.report import find_chromium

#: README figure name → key of figures_from_results ({task} = the chosen task).
README_FIGURES = {
    "accuracy": "accuracy",
    "overview": "overview",
    "simaou_layers": "{task}/simaou_layers",
    "simam_layers": "{task}/simam_layers",
    "heads_simam": "{task}/heads_simam",
    "heads_attribution": "{task}/heads_attribution",
    "heads_cos": "{task}/heads_cos",
    "heads_norms": "{task}/heads_norms",
}


def readme_figures(results: DaiResults, task: str | None = None) -> dict[str, go.Figure]:
    """The README's result figures (those the results hold) for ``task`` (default: the first)."""
    task = task or next(iter(results.tasks))
    if task not in results.tasks:
        raise SystemExit(f"task {task!r} not in the results: {', '.join(results.tasks)}")
    figs = figures_from_results(results)
    wanted = {name: key.format(task=task) for name, key in README_FIGURES.items()}
    return {name: figs[key] for name, key in wanted.items() if key in figs}


def attention_figures(results: DaiResults, results_dir: Path) -> dict[str, go.Figure]:
    """Last-token attention (ICL/ZSL/FT) and ΔW spectra, from the example the run recorded."""
    cached = read_attention(results_dir, results)
    if cached is None:
        print("no attention_example.json for these results: rerun `dualform reproduce dai` "
              "with the same options to record it", file=sys.stderr)
        return {}
    example = AttentionExample.from_dict(cached["example"])
    spectra = {k: np.array(v) for k, v in cached["spectra"].items()}
    layer, head = cached["spectra_layer"], cached["spectra_head"]
    return {
        "attention_last_token": demo_attention_figure(example),
        "spectra": spectra_figure(spectra, f"Singular values at layer {layer}, head {head}",
                                  layer=layer, head=head),
    }


def ensure_browser() -> str:
    """Point kaleido at a local Chromium (``BROWSER_PATH``); exit with the install command."""
    path = os.environ.get("BROWSER_PATH") or find_chromium()
    if path is None:
        sys.exit("kaleido needs Chrome/Chromium and cannot download it offline: "
                 "apt-get install -y chromium (or set BROWSER_PATH)")
    os.environ["BROWSER_PATH"] = path
    return path


def export(figs: dict[str, go.Figure], out_dir: Path, scale: float = 2.0) -> list[Path]:
    """Write ``OUT_DIR/<name>.png`` for every figure with one kaleido session."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png" for name in figs]
    heights = [fig.layout.height or 560 for fig in figs.values()]
    pio.write_images(list(figs.values()), paths, width=1000, height=heights, scale=scale)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--task", default=None, help="task of the per-task figures")
    parser.add_argument("--no-attention", action="store_true",
                        help="skip the attention example (attention_example.json of the run)")
    parser.add_argument("--scale", type=float, default=2.0, help="PNG pixel scale")
    args = parser.parse_args()
    results = DaiResults.load(args.results_dir)
    if results is None:
        sys.exit(f"no results.json in {args.results_dir}; run `dualform reproduce dai` first")
    browser = ensure_browser()
    figs = readme_figures(results, args.task)
    if not args.no_attention:
        figs.update(attention_figures(results, args.results_dir))
    for path in export(figs, args.out_dir, args.scale):
        print(f"wrote {path}")
    print(f"(kaleido via {browser})")


if __name__ == "__main__":
    main()
