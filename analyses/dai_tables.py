"""Markdown tables for the README from a `dualform reproduce dai` results directory.

Usage: python analyses/dai_tables.py results/dai

Prints the paper-layout table with 95 % intervals, the paired differences, the caption, then
per task each seed's validation choices and where the time went.
"""

from __future__ import annotations

import sys

from dualform.experiments.dai.results import DaiResults
from dualform.viz.tables import dai_markdown


def main(results_dir: str) -> None:
    results = DaiResults.load(results_dir)
    if results is None:
        sys.exit(f"no results.json in {results_dir}; run `dualform reproduce dai --out {results_dir}`")
    print(dai_markdown(results))
    print()
    for name, task in results.tasks.items():
        chosen = "; ".join(f"seed {s.replicate}: demos {s.selection.demo_seed}, lr {s.selection.lr}"
                           for s in task.seeds)
        timing = ", ".join(f"{k} {v:.0f}s" for k, v in task.timing_s.items())
        print(f"- {name}: {chosen}; time: {timing}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/dai")
