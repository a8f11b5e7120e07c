"""Run the von Oswald et al. (2023) regression experiment and write the README figures.

Usage::

    python analyses/regression_figures.py OUT_DIR            # default CPU config (a few minutes)
    python analyses/regression_figures.py OUT_DIR --gpu      # paper-sized config on CUDA

Writes ``OUT_DIR/results.json`` and, for each figure, ``.html`` (always) and ``.png`` (when
kaleido can export; kaleido ≥ 1 needs a Chrome/Chromium — ``plotly_get_chrome``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dualform.experiments.vonoswald.experiment import RegressionConfig, run_regression


def format_table(results: dict) -> str:
    """Markdown table of losses and alignment metrics, with the paper's numbers."""
    head = "| K | GD (η) | GD++ | LSA | paper GD | model cos | model diff | preds diff |"
    lines = [head, "|" + "---|" * 8]
    for r in results["table"]:
        paper = f"{r['paper']:.3f}" if r["paper"] is not None else "–"
        lines.append(
            f"| {r['steps']} | {r['gd']:.4f} ({r['gd_eta']:.2f}) | {r['gdpp']:.4f} | {r['lsa']:.4f} "
            f"| {paper} | {r['model_cos']:.4f} | {r['model_diff']:.4f} | {r['preds_diff']:.4f} |"
        )
    return "\n".join(lines)


def format_targets(results: dict) -> str:
    """One line per reproduction target."""
    return "\n".join(
        f"{'MET ' if t['met'] else 'MISS'} {name}: {t['value']:.4f} (target {t['target']})"
        for name, t in results["targets"].items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--gpu", action="store_true", help="paper-sized config")
    parser.add_argument(
        "--device", default=None, help="torch device (default cpu, or cuda with --gpu)"
    )
    parser.add_argument("--no-png", action="store_true", help="write HTML only")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    cfg = RegressionConfig.gpu(args.device or "cuda") if args.gpu else RegressionConfig()
    if args.device and not args.gpu:
        cfg.device = args.device
    cfg.png = not args.no_png
    results = run_regression(args.out_dir, config=cfg, progress=not args.quiet)
    print(format_table(results))
    print(format_targets(results))
    print(f"PNG export: {results['png_export']}")
    print(f"wall time: {results['wall_seconds']:.1f} s -> {args.out_dir}")


if __name__ == "__main__":
    main()
