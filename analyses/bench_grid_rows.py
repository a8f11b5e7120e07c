"""How many finetuning rows one batched SGD run should hold (``CPU_MAX_ROWS``).

Times ``finetune_kv_rows`` on the embedded model with 8 SGD steps of real 32-shot
finetuning texts (demonstration seeds × the default 4 rates) for each row count, and prints the
cost per row and step against the 12-row batch of the default run, measured in the same run.

Usage::

    python analyses/bench_grid_rows.py                 # 12, 24, 40 rows; one batch each
    python analyses/bench_grid_rows.py --rows 12 20 28 40 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import torch

from dualform.core.finetune_grid import finetune_kv_rows
from dualform.experiments.dai.conditions import demo_training_texts
from dualform.experiments.dai.config import DEFAULT_LR_GRID
from dualform.models.load import DEFAULT_MODEL, load_model
from dualform.tasks.prompts import load_task, sample_demos

STEPS = 8
BASELINE_ROWS = 12


def row_step_ms(model, rows, repeats: int) -> float:
    """Median over ``repeats`` of the milliseconds per row and SGD step, all rows in one batch."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        finetune_kv_rows(model, rows, max_rows=len(rows))
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2] / STEPS / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[12, 24, 40])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--task", default="afinn-sentiment")
    args = parser.parse_args()
    model = load_model(DEFAULT_MODEL)
    task = load_task(args.task, seed=0, n_validation=12)
    n_seeds = -(-max([*args.rows, BASELINE_ROWS]) // len(DEFAULT_LR_GRID))
    texts = [demo_training_texts(model, task, sample_demos(task, 32, seed))[:STEPS]
             for seed in range(1, n_seeds + 1)]
    every_row = [(t, lr) for t in texts for lr in DEFAULT_LR_GRID]
    print(f"{model.cfg.model_name}, {STEPS} SGD steps, {torch.get_num_threads()} threads")
    base = row_step_ms(model, every_row[:BASELINE_ROWS], args.repeats)
    print(f"{BASELINE_ROWS:3d} rows: {base:5.1f} ms per row-step (baseline)")
    for n in args.rows:
        ms = row_step_ms(model, every_row[:n], args.repeats)
        print(f"{n:3d} rows: {ms:5.1f} ms per row-step, {ms / base:.2f}x the {BASELINE_ROWS}-row batch's")


if __name__ == "__main__":
    main()
