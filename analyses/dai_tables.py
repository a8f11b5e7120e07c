"""Markdown tables for the README from a `dualform reproduce dai` results directory.

Usage: python analyses/dai_tables.py results/dai
"""

from __future__ import annotations

import sys
from pathlib import Path

from dualform.infra.io import read_json
from dualform.viz.tables import dai_markdown


def main(results_dir: str) -> None:
    results = read_json(Path(results_dir) / "results.json")
    if results is None:
        sys.exit(f"no results.json in {results_dir}; run `dualform reproduce dai --out {results_dir}`")
    print(dai_markdown(results))
    for name, task in results["tasks"].items():
        timing = ", ".join(f"{k} {v:.0f}s" for k, v in task.get("timing_s", {}).items())
        print(f"\n{name}: chosen demo seed {task['selection']['demo_seed']}, "
              f"lr {task['selection']['lr']}; time: {timing}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/dai")
