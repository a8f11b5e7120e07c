"""The authors' metric conventions against dualform's former choices, on the embedded model.

Runs `reproduce dai` (no attribution, no untrained baseline) once per combination of the two
convention options and prints the training-attention metrics and the FT-side numbers per task:

* ``scaled_queries`` — Kendall's FT map ``q·q/d_head`` (official) or raw ``q·q``;
* ``keep_separator`` — the separator out of the finetuning texts and ranked tokens (official)
  or in both (this changes the finetuning itself, hence accuracy and Rec2FTP).

Usage: python analyses/metric_conventions.py [OUT_DIR]   (default results/conventions)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from dualform.experiments.dai.protocol import DaiConfig, run_dai
from dualform.viz.tables import metric

VARIANTS = {
    "official (scaled q, no separator)": {},
    "raw q·q": {"scaled_queries": False},
    "separator kept": {"keep_separator": True},
    "raw q·q + separator kept (former)": {"scaled_queries": False, "keep_separator": True},
}
COLUMNS = {
    "FT acc": ("accuracy", "ft"), "Rec2FTP": ("rec2ftp",),
    "Kendall tok.": ("kendall", "value", "mean"), "rand.": ("kendall", "random", "mean"),
    "Kendall ex.": ("kendall", "example", "mean"), "rand. ": ("kendall", "example_random", "mean"),
    "top-100 rec.": ("topk_recall", "token", "value", "mean"),
    "rand.  ": ("topk_recall", "token", "random", "mean"),
    "top-5 rec. ex.": ("topk_recall", "example", "value", "mean"),
    "rand.   ": ("topk_recall", "example", "random", "mean"),
}


def main(out: str) -> None:
    base = DaiConfig(attribution=False, untrained_baseline=False)
    print("| task | variant | " + " | ".join(c.strip() for c in COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 2))
    runs = {name: run_dai(Path(out) / f"v{i}", dataclasses.replace(base, **options), progress=False)
            for i, (name, options) in enumerate(VARIANTS.items())}
    for task in base.tasks:
        for name, results in runs.items():
            t = results["tasks"][task]
            cells = [metric(t, *path) for path in COLUMNS.values()]
            text = [c if isinstance(c, str) else "–" if c is None else f"{c:.4f}" for c in cells]
            print(f"| {task} | {name} | " + " | ".join(text) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/conventions")
