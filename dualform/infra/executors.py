"""Executors: where the jobs of a sweep run. No scheduler of our own.

An executor has one method, ``map(fn, items)``, that yields ``(item, result, error)`` as jobs
finish (in any order); a failed job yields its exception instead of stopping the others, so a
lost worker costs one job. Two implementations:

* :class:`LocalExecutor` — on this machine: in this process, one job after the other (the
  default), or with ``workers=N`` in N spawned processes (for CPU-bound jobs too small to use
  several cores each, e.g. the momentum twins; ``fn`` and the items must then be picklable);
* :class:`RayExecutor` — Ray tasks (``pip install 'dualform[ray]'``): ``address=None`` starts a
  local Ray (as the tests do), ``address="auto"`` or ``"ray://head:10001"`` joins a cluster.
  Ray retries a job whose worker died (``max_retries``) before reporting it failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from dualform.errors import InvalidArgumentError

Outcome = tuple[Any, Any, BaseException | None]


@runtime_checkable
class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Outcome]: ...


class LocalExecutor:
    """Runs every job on this machine: in this process in order, or in ``workers`` processes.

    ``workers > 1`` starts that many *spawned* processes (a fresh interpreter each: no forked
    torch thread pools) and yields jobs as they finish; ``fn`` must be a module-level function
    (or a ``functools.partial`` of one) and the items picklable.
    """

    def __init__(self, progress: bool = True, workers: int = 1) -> None:
        self.progress, self.workers = progress, workers

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Outcome]:
        if self.workers > 1 and len(items) > 1:
            yield from self._map_processes(fn, items)
            return
        for item in tqdm(items, desc="jobs", disable=not self.progress):
            try:
                yield item, fn(item), None
            except Exception as err:  # noqa: BLE001 - reported per job, the sweep goes on
                yield item, None, err

    def _map_processes(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Outcome]:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        workers = min(self.workers, len(items))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, item): item for item in items}
            for future in tqdm(as_completed(futures), total=len(futures), desc="jobs",
                               disable=not self.progress):
                error = future.exception()
                yield futures[future], None if error else future.result(), error


class RayExecutor:
    """Runs each job as a Ray task with ``cpus_per_job`` CPUs (and ``gpus_per_job`` GPUs)."""

    def __init__(self, address: str | None = None, *, cpus_per_job: float = 1,
                 gpus_per_job: float = 0, max_retries: int = 2, progress: bool = True,
                 **init_kwargs) -> None:
        try:
            import ray
        except ImportError as err:
            raise ImportError(
                "The Ray executor needs Ray: pip install 'dualform[ray]'"
            ) from err
        self.ray = ray
        if not ray.is_initialized():
            init_kwargs.setdefault("include_dashboard", False)
            init_kwargs.setdefault("log_to_driver", False)
            ray.init(address=address, **init_kwargs)
        self.options = {"num_cpus": cpus_per_job, "num_gpus": gpus_per_job,
                        "max_retries": max_retries}
        self.progress = progress

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Outcome]:
        remote = self.ray.remote(**self.options)(fn)
        pending = {remote.remote(item): item for item in items}
        with tqdm(total=len(pending), desc="jobs (ray)", disable=not self.progress) as bar:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                item = pending.pop(done[0])
                try:
                    yield item, self.ray.get(done[0]), None
                except Exception as err:  # noqa: BLE001 - a failed/lost job; the rest go on
                    yield item, None, err
                bar.update()

    def shutdown(self) -> None:
        self.ray.shutdown()


def get_executor(name: str = "local", *, address: str | None = None, **kwargs) -> Executor:
    """``"local"`` or ``"ray"`` (``address``: ``None`` for a local Ray, or a cluster's)."""
    if name == "local":  # ``address`` has no meaning here
        return LocalExecutor(**kwargs)
    if name == "ray":
        return RayExecutor(address, **kwargs)
    raise InvalidArgumentError(f"Unknown executor {name!r}; choose 'local' or 'ray'.")
