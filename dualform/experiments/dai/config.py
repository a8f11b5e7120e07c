"""What defines a ``reproduce dai`` run (:class:`DaiConfig`, saved in ``results.json``), a task
as the protocol sees it (:class:`TaskContext`: splits, label token ids, the config) and the
:class:`Timer` every stage adds its seconds to (``TaskResult.timing_s``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from dualform.errors import check_count, check_learning_rates, check_not_empty
from dualform.models.cpu_matmul import install_fast_linears
from dualform.models.load import DEFAULT_MODEL, load_model
from dualform.tasks.prompts import OFFLINE_TASKS, Task, label_token_ids, load_task

FULL_LR_GRID = tuple(round(m * e, 6) for e in (0.1, 0.01, 0.001, 0.0001) for m in range(1, 10))
DEFAULT_LR_GRID = (0.01, 0.005, 0.001, 0.0005)  # a slice of Dai's grid; larger rates collapse SmolLM2-135M
DEFAULT_TASKS = OFFLINE_TASKS  # every packaged task


@dataclass
class DaiConfig:
    """Everything that defines a run; saved in ``results.json``."""

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = DEFAULT_TASKS
    shots: int = 32
    n_validation: int = 12
    n_test: int = 200  # at most: all of a smaller test split
    seeds: int = 3  # independent replicates: demonstration sets (and finetuning orders)
    demo_seeds: tuple[int, ...] = (1, 2)  # each replicate chooses among its own offsets of these
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    n_attribution: int | None = 48  # head attribution on the first N test examples (None: all)
    n_untrained: int | None = 64  # the untrained baseline on the first N test examples (None: all)
    layer_causal: bool = False
    reuse_prefix: bool = True  # run the demonstrations once per task (KV cache)
    batch_size: int | None = None  # None: from free memory (auto_batch_size); 1: no batching
    untrained_baseline: bool = True
    attribution: bool = True
    share_seeds: bool = True  # one finetuning batch for all seeds × rates, one ZSL pass (off: per seed)
    workers: int = 1  # tasks at once on threads sharing the weights (faster on a CPU, more memory)
    device: str = "cpu"
    dtype: str = "float32"  # forward passes and finetuning (SGD keeps float32 master weights)
    device_map: str | None = None  # "auto": spread a large HF model over GPUs (accelerate)
    seed: int = 0
    # Metric conventions: the authors' code by default (see dualform.experiments.dai.scoring).
    scaled_queries: bool = True  # Kendall's FT map q·q/d_head as recorded officially; False: q·q
    keep_separator: bool = False  # train on and rank each demo's separator too (official: no)

    def __post_init__(self) -> None:  # bad settings fail here, before any work
        check_not_empty(self.tasks, "The task list (--tasks)")
        check_not_empty(self.demo_seeds, "The demonstration seeds (--demo-seeds)")
        for name, value in (("--shots", self.shots), ("--n-test", self.n_test),
                            ("--n-validation", self.n_validation)):
            check_count(value, f"{name.removeprefix('--').replace('-', '_')} ({name})")
        if self.n_untrained is not None:
            check_count(self.n_untrained, "n_untrained (--n-untrained; 0 there: every test example)")
        check_count(self.workers, "workers (--workers)")
        if self.batch_size is not None:
            check_count(self.batch_size, "batch_size (--batch-size; 0 there: from free memory)")
        check_learning_rates(self.lr_grid, "learning-rate grid (--lr-grid)")

    def with_full_grid(self) -> DaiConfig:
        return dataclasses.replace(self, lr_grid=FULL_LR_GRID)

    def candidate_seeds(self, replicate: int) -> list[int]:
        """The demonstration seeds replicate ``replicate`` chooses from (replicate 0: exactly
        ``demo_seeds``; replicate r: ``demo_seeds`` + 1000·r, disjoint draws)."""
        return [s + REPLICATE_STRIDE * replicate for s in self.demo_seeds]

    @property
    def batched(self) -> bool:
        """Whether finetuning runs share one batched run (off: batch size 1 or layer-causal)."""
        return self.batch_size != 1 and not self.layer_causal


REPLICATE_STRIDE = 1000


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class TaskContext:
    """A task as the protocol uses it: its splits, label token ids and the run's config."""

    task: Task
    label_ids: list[int]
    config: DaiConfig

    @property
    def test_gold(self) -> list[int]:
        return [example.label for example in self.task.test]

    def first(self, n: int | None) -> TaskContext:
        """The same task with only its first ``n`` test examples (``None``: all of them)."""
        if n is None or n >= len(self.task.test):
            return self
        return TaskContext(dataclasses.replace(self.task, test=self.task.test[:n]), self.label_ids,
                           self.config)


def task_context(model, name: str, config: DaiConfig) -> TaskContext:
    """Load ``name`` with ``config.n_test`` test examples, or all of a smaller test split
    (rounded down to whole classes, as the balanced splits draw them)."""
    full = load_task(name, seed=config.seed, n_validation=config.n_validation)
    unit = full.n_classes
    n_test = min(config.n_test, len(full.test)) // unit * unit
    task = load_task(name, seed=config.seed, n_validation=config.n_validation, n_test=n_test)
    return TaskContext(task, label_token_ids(model, task), config)


def load_run_model(config: DaiConfig, untrained: bool = False):
    """The model a run of ``config`` uses (its device, dtype and device map), or its untrained
    (random-weights) twin. The run's own model: every weight frozen (finetuning turns on the
    gradient of the K/V copies it trains) and its frozen float32 CPU linears through oneDNN
    where that is faster here (:mod:`dualform.models.cpu_matmul`)."""
    model = load_model(config.model, device=config.device, dtype=config.dtype, untrained=untrained,
                       device_map=config.device_map)
    model.requires_grad_(False)
    install_fast_linears(model)
    return model


def config_dict(config: DaiConfig) -> dict:
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
