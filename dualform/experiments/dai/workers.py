"""Several tasks of ``reproduce dai`` at once, on worker threads of one process (``--workers``).

A task's work is many small matrix products (batches of ~10-token queries, SGD steps of 12 short
texts) that CPU threads share imperfectly: on 2 cores, two tasks side by side on one torch
thread each finish in ≈ 0.8× the time of one after the other on two threads (the default run:
0.89×) — but each holds its own working memory (+1.6 GiB for the second; README: Benchmarks,
``analyses/bench_task_threads.py``), so one worker is the default. Every worker has its own
module objects (hooks and shims are installed per model) over the very same weight tensors
(:func:`~dualform.models.load.clone_model`, everything shared), and ``threads // workers`` torch
threads (the last tasks get the threads of the workers that ran out of tasks). A task reads
nothing another task writes: the numbers are those of one worker up to the float rounding of
another thread count (on the embedded model, only the ICL attribution effects moved, by ≤ 1e-7).

Workers are daemon threads; results reach the caller (which saves them) as each task finishes.
An error in a task stops the handing out of tasks; the tasks already running finish and are
handed over, then the error is raised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch

from dualform.models.load import clone_model

T = TypeVar("T")


def run_tasks(run: Callable[..., T], names: Sequence[str], models: tuple, *,
              workers: int = 1) -> Iterator[tuple[str, T]]:
    """``(name, run(*models, name))`` for every task in ``names``, as each finishes (in order,
    in this thread, with one worker); ``workers > 1`` runs that many at once on threads, each
    with its own copies of ``models`` over the same weights (``None`` stays ``None``)."""
    workers = min(workers, len(names))
    if workers <= 1:
        for name in names:
            yield name, run(*models, name)
        return
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for name in names:
        todo.put(name)
    done: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def work(own: tuple) -> None:
        while not stop.is_set():
            try:
                name = todo.get_nowait()
            except queue.Empty:
                break
            try:
                done.put((name, run(*own, name), None))
            except BaseException as err:  # noqa: BLE001 - handed to the caller, raised there
                stop.set()
                done.put((name, None, err))
        done.put(None)  # this worker is finished

    error = None
    with split_threads(workers) as total:
        try:
            # Every copy is made before any worker starts: a copy made while a worker runs
            # would carry the hooks that worker has on the model at that moment.
            copies = [models] + [tuple(sharing_copy(m) for m in models) for _ in range(workers - 1)]
            for w, own in enumerate(copies):
                threading.Thread(target=work, args=(own,), daemon=True, name=f"dai-worker-{w}").start()
            running = workers
            while running:
                item = done.get()
                if item is None:  # a worker is out of tasks: the others get its threads
                    running -= 1
                    torch.set_num_threads(max(1, total // max(running, 1)))
                elif item[2] is not None:
                    error = error or item[2]
                else:
                    yield item[0], item[1]
        finally:
            stop.set()  # an error, or the caller stopped early: hand out no more tasks
    if error is not None:
        raise error


def sharing_copy(model):
    """A copy of ``model`` with its own modules over the very same weight tensors (``None``:
    ``None``)."""
    if model is None:
        return None
    return clone_model(model, share=[*model.parameters(), *model.buffers()])


@contextmanager
def split_threads(workers: int) -> Iterator[int]:
    """Torch's CPU threads split among ``workers`` (``threads // workers`` each, at least one)
    for the block, then restored; yields the threads there were. (The count is the process's:
    a worker's next operation runs on the count set last.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
