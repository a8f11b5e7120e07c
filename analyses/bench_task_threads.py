"""``reproduce dai --workers 2`` against the default one task at a time, in one run.

A task's work is many small matrix products, which two CPU threads share imperfectly. This
script runs the same tasks (the default protocol) twice in this process, back to back: one
after the other on every torch thread (``--workers 1``, the default), then side by side on
worker threads, each with its own module objects over the same weights and
``threads // workers`` torch threads (``--workers N``). It prints both wall times, their ratio,
the process's peak RSS during each (Linux: it reads ``/proc``), and whether the two give the
same numbers (every seed's per-example metrics; other torch thread counts may round
differently, though on the embedded model they did not in the runs the README quotes).

Usage::

    python analyses/bench_task_threads.py                                   # 2 small tasks
    python analyses/bench_task_threads.py --tasks afinn-sentiment vader-valence --grid-rows 6
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

import dualform.core.finetune_grid as grid
from dualform.experiments.dai.config import DaiConfig, load_run_model
from dualform.experiments.dai.protocol import run_task
from dualform.experiments.dai.workers import run_tasks
from dualform.infra.memory import return_freed_memory


def peak_rss_gib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**20


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    return_freed_memory()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def run_all(models, tasks, config, workers: int = 1) -> dict:
    """``{task: TaskResult}`` as ``reproduce dai --workers N`` computes them
    (:func:`dualform.experiments.dai.workers.run_tasks`; one worker: the default)."""
    return dict(run_tasks(partial(run_task, config=config, progress=False), tasks, models,
                          workers=workers))


def same_numbers(a: dict, b: dict) -> bool:
    for name, task in a.items():
        other = b[name]
        for sa, sb in zip(task.seeds + task.untrained, other.seeds + other.untrained, strict=True):
            if any(v.per_example != sb.metrics[k].per_example for k, v in sa.metrics.items()):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["country-region", "capital-region"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--grid-rows", type=int, default=grid.CPU_MAX_ROWS,
                        help="rows per batched finetuning run (smaller: less memory)")
    parser.add_argument("--batch-size", type=int, default=0, help="query batch (0: from free memory)")
    args = parser.parse_args()
    grid.CPU_MAX_ROWS = args.grid_rows
    config = DaiConfig(tasks=tuple(args.tasks), batch_size=args.batch_size or None)
    models = (load_run_model(config), load_run_model(config, untrained=True))
    base = peak_rss_gib()
    print(f"{len(args.tasks)} tasks, {torch.get_num_threads()} torch threads, models loaded: "
          f"peak RSS {base:.2f} GiB")
    runs = {}
    for workers in (1, args.workers):
        reset_peak()
        start = time.perf_counter()
        results = run_all(models, args.tasks, config, workers)
        runs[workers] = (results, time.perf_counter() - start)
        label = "one after the other" if workers == 1 else f"{workers} side by side"
        print(f"{label:>22}: {runs[workers][1]:6.1f} s, peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    (first, sequential), (second, parallel) = runs[1], runs[args.workers]
    print(f"side by side / one after the other: {parallel / sequential:.2f}× the wall time; same "
          f"numbers: {same_numbers(first, second)}")


if __name__ == "__main__":
    main()
