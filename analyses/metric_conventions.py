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

from dualform.experiments.dai.protocol import (
    DaiConfig,
    Timer,
    choose_demo_seed,
    choose_lr,
    evaluate,
    lr_val_accuracies,
    seed_val_accuracy,
)
from dualform.models.load import load_model
from dualform.tasks.prompts import label_token_ids, load_task, sample_demos
from dualform.viz.tables import metric

COLUMNS = {
    "FT acc": ("accuracy", "ft"), "Rec2FTP": ("rec2ftp",),
    "Kendall tok.": ("kendall", "value", "mean"), "rand. tok.": ("kendall", "random", "mean"),
    "Kendall ex.": ("kendall", "example", "mean"), "rand. ex.": ("kendall", "example_random", "mean"),
    "top-100 rec.": ("topk_recall", "token", "value", "mean"),
    "rand. top-100": ("topk_recall", "token", "random", "mean"),
    "top-5 rec. ex.": ("topk_recall", "example", "value", "mean"),
    "rand. top-5": ("topk_recall", "example", "random", "mean"),
}


def rows(model, name: str, base: DaiConfig):
    """(variant, task results) for the four combinations of the two options on one task."""
    for keep in (False, True):
        config = dataclasses.replace(base, keep_separator=keep)
        task = load_task(name, seed=config.seed, n_validation=config.n_validation, n_test=config.n_test)
        label_ids = label_token_ids(model, task)
        seed = choose_demo_seed({s: seed_val_accuracy(model, task, s, label_ids, config)
                                 for s in config.demo_seeds})
        demos = sample_demos(task, config.shots, seed)
        lr_acc, tuned = lr_val_accuracies(model, task, demos, label_ids, config)
        lr = choose_lr(lr_acc)
        for scaled in (True, False):
            cfg = dataclasses.replace(config, scaled_queries=scaled)
            out = evaluate(model, task, demos, lr, label_ids, cfg, Timer(), progress=False,
                           ft=tuned.get(str(lr)))
            variant = f"{'scaled' if scaled else 'raw'} q, separator {'kept' if keep else 'out'}"
            yield variant, out


def main(tasks: list[str]) -> None:
    base = DaiConfig(attribution=False, untrained_baseline=False)
    model = load_model(base.model)
    print("| task | variant | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 2), flush=True)
    for name in tasks or base.tasks:
        for variant, t in rows(model, name, base):
            cells = [metric(t, *path) for path in COLUMNS.values()]
            text = [c if isinstance(c, str) else "–" if c is None else f"{c:.4f}" for c in cells]
            print(f"| {name} | {variant} | " + " | ".join(text) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
