"""The authors' metric conventions against dualform's former choices, on the embedded model.

Per task and per separator convention, the protocol of `reproduce dai` selects the
demonstration seed and the learning rate, finetunes and records ZSL / ICL / FT once, then
scores the same records with Kendall's finetuning map from scaled and from raw queries:

* ``scaled_queries`` — Kendall's FT map ``q·q/d_head`` (official) or raw ``q·q``;
* ``keep_separator`` — the separator out of the finetuning texts and ranked tokens (official)
  or in both (this changes the finetuning itself, hence accuracy and Rec2FTP).

Usage: python analyses/metric_conventions.py [TASK ...]   (default: the default tasks)
"""

from __future__ import annotations

import dataclasses
import sys

from dualform.experiments.dai import metric_names as N
from dualform.experiments.dai import results as R
from dualform.experiments.dai.config import DaiConfig, Timer, task_context
from dualform.experiments.dai.protocol import evaluate_task
from dualform.experiments.dai.selection import select
from dualform.models.load import load_model

COLUMNS = {
    "FT acc": N.ACCURACY["ft"], "Rec2FTP": N.REC2FTP,
    "Kendall tok.": N.KENDALL, "rand. tok.": N.KENDALL_RANDOM,
    "Kendall ex.": N.KENDALL_EXAMPLE, "rand. ex.": N.KENDALL_EXAMPLE_RANDOM,
    "top-100 rec.": N.TOPK_TOKEN, "rand. top-100": N.TOPK_TOKEN_RANDOM,
    "top-5 rec. ex.": N.TOPK_EXAMPLE, "rand. top-5": N.TOPK_EXAMPLE_RANDOM,
}


def rows(model, name: str, base: DaiConfig):
    """(variant, first seed's results) for the four combinations of the two options on one task."""
    for keep in (False, True):
        ctx = task_context(model, name, dataclasses.replace(base, keep_separator=keep, seeds=1))
        selections, tuned = select(model, ctx, Timer())
        for scaled in (True, False):
            scored = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, scaled_queries=scaled))
            out = evaluate_task(model, None, scored, selections, Timer(), tuned=tuned, progress=False)
            variant = f"{'scaled' if scaled else 'raw'} q, separator {'kept' if keep else 'out'}"
            yield variant, out.seeds[0]


def cell(seed: R.SeedResult, name: str) -> str:
    if seed.not_applicable(name):
        return "n/a"
    summary = seed.metric(name)
    return "–" if summary is None or summary.mean is None else f"{summary.mean:.4f}"


def main(tasks: list[str]) -> None:
    base = DaiConfig(attribution=False, untrained_baseline=False)
    model = load_model(base.model)
    print("| task | variant | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 2), flush=True)
    for name in tasks or base.tasks:
        for variant, seed in rows(model, name, base):
            text = [cell(seed, metric) for metric in COLUMNS.values()]
            print(f"| {name} | {variant} | " + " | ".join(text) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
