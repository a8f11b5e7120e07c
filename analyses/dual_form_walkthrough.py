"""The dual-form walkthrough on the embedded model (issue: the dual form, explicitly).

Usage: python analyses/dual_form_walkthrough.py [--model smollm2-135m] [--out walkthrough.json]
Prints per-layer identity errors, ‖ΔW_ICL‖ vs ‖W_ZSL‖, and cos(ΔW_ICL q, Δz_FT) per layer.
"""

from __future__ import annotations

import argparse

from dualform.experiments.walkthrough import run_walkthrough
from dualform.infra.io import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run_walkthrough(args.model, lr=args.lr)
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
