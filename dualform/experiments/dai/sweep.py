"""Sweeps of ``reproduce dai`` over models × tasks × demo seeds × learning rates, on an executor.

The protocol is :func:`dualform.experiments.dai.protocol.run_task`'s, cut into independent jobs in three waves:

1. ``seed`` jobs — ICL validation accuracy of every (model, task, demo seed);
2. ``lr`` jobs — FT validation accuracy of every learning rate, with the chosen seed;
3. ``test`` jobs — everything on the test split with the chosen seed and rate.

Every job returns its result to the driver, which writes it to ``OUT/jobs/<job key>.json``
atomically; a rerun skips the jobs whose file exists, so a lost worker or a killed driver costs
only the unfinished jobs. At the end ``OUT/<model>/results.json`` has exactly the layout of
:func:`dualform.experiments.dai.protocol.run_dai` (``dualform report OUT/<model>`` works on it).

Workers keep the models they loaded (one process serves many jobs), so each worker pays the
model load once per model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dualform.experiments.dai.protocol import (
    DaiConfig,
    Timer,
    choose_demo_seed,
    choose_lr,
    config_dict,
    evaluate_on_test,
    lr_val_accuracy,
    seed_val_accuracy,
)
from dualform.infra.executors import Executor, LocalExecutor
from dualform.infra.io import read_json, write_json_atomic
from dualform.infra.results_dir import EXECUTION_ONLY, pin_settings, results_directory
from dualform.infra.versions import package_versions
from dualform.models.load import load_model
from dualform.tasks.prompts import label_token_ids, load_task, sample_demos


@dataclass(frozen=True)
class Job:
    """One unit of a sweep; ``config`` is the run's :class:`DaiConfig` for one model."""

    stage: str  # "seed" | "lr" | "test"
    config: DaiConfig
    task: str
    demo_seed: int
    lr: float | None = None
    selection: dict | None = None  # test jobs: the choices made on validation

    @property
    def key(self) -> str:
        parts = [self.stage, model_slug(self.config.model), self.task, f"seed{self.demo_seed}"]
        if self.stage == "lr":
            parts.append(f"lr{self.lr:g}")
        return "__".join(parts)


def model_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


_MODELS: dict[tuple, object] = {}


def _model(config: DaiConfig, untrained: bool = False):
    """Load once per worker process and keep (jobs of one model share it)."""
    key = (config.model, untrained, config.device, config.dtype, config.device_map)
    if key not in _MODELS:
        _MODELS[key] = load_model(config.model, device=config.device, dtype=config.dtype,
                                  untrained=untrained, device_map=config.device_map)
    return _MODELS[key]


def run_job(job: Job) -> dict:
    """Run one job (in whatever process the executor chose) and return its JSON-able result."""
    cfg = job.config
    model = _model(cfg)
    task = load_task(job.task, seed=cfg.seed, n_validation=cfg.n_validation, n_test=cfg.n_test)
    label_ids = label_token_ids(model, task)
    if job.stage == "seed":
        return {"val_acc": seed_val_accuracy(model, task, job.demo_seed, label_ids, cfg)}
    if job.stage == "lr":
        demos = sample_demos(task, cfg.shots, job.demo_seed)
        return {"val_acc": lr_val_accuracy(model, task, demos, job.lr, label_ids, cfg)}
    untrained = _model(cfg, untrained=True) if cfg.untrained_baseline else None
    return evaluate_on_test(model, untrained, task, job.selection, label_ids, cfg, Timer(),
                      progress=False)


@dataclass
class SweepFailure:
    job: str
    error: str


def run_sweep(out_dir: str | Path, config: DaiConfig, models: Sequence[str] | None = None,
              executor: Executor | None = None, *, overwrite: bool = False) -> dict[str, dict]:
    """:func:`sweep` with ``out_dir`` created, checked writable and locked first, and its
    ``sweep.json`` pinning the settings the job files were made with (other settings are
    refused unless ``overwrite`` moves the old jobs aside)."""
    slugs = [model_slug(m) for m in (models or [config.model])]
    with results_directory(out_dir, subdirs=("jobs", *slugs)) as out:
        pin_settings(out / "sweep.json", config_dict(config),
                     ignore=("model", "tasks", "demo_seeds", "lr_grid", *EXECUTION_ONLY),
                     overwrite=overwrite,
                     also_move=[out / "jobs", *(out / s / "results.json" for s in slugs)])
        return sweep(out, config, models, executor)


def sweep(out_dir: str | Path, config: DaiConfig, models: Sequence[str] | None = None,
          executor: Executor | None = None) -> dict[str, dict]:
    """Run (or resume) the sweep; returns ``{model: results}`` (also written per model).

    ``config.lr_grid``, ``config.demo_seeds`` and ``config.tasks`` span the grid; ``models``
    defaults to ``[config.model]``. Failed jobs are listed under ``"failed_jobs"`` and the
    tasks that depend on them are left out; rerunning retries them.
    """
    out = Path(out_dir)
    executor = executor or LocalExecutor()
    configs = [dataclasses.replace(config, model=m) for m in (models or [config.model])]
    failures: list[SweepFailure] = []

    seed_jobs = [Job("seed", c, t, s) for c in configs for t in c.tasks for s in c.demo_seeds]
    seed_res = _run_wave(out, seed_jobs, executor, failures)
    chosen = {}
    for c in configs:
        for t in c.tasks:
            accs = {s: seed_res.get(Job("seed", c, t, s).key) for s in c.demo_seeds}
            if all(a is not None for a in accs.values()):
                chosen[(c.model, t)] = {s: a["val_acc"] for s, a in accs.items()}

    lr_jobs = [Job("lr", c, t, choose_demo_seed(chosen[(c.model, t)]), lr)
               for c in configs for t in c.tasks if (c.model, t) in chosen for lr in c.lr_grid]
    lr_res = _run_wave(out, lr_jobs, executor, failures)

    test_jobs = []
    for c in configs:
        for t in c.tasks:
            if (c.model, t) not in chosen:
                continue
            seed = choose_demo_seed(chosen[(c.model, t)])
            lr_acc = {str(lr): lr_res.get(Job("lr", c, t, seed, lr).key) for lr in c.lr_grid}
            if any(v is None for v in lr_acc.values()):
                continue
            lr_acc = {k: v["val_acc"] for k, v in lr_acc.items()}
            selection = {"demo_seed": seed, "lr": choose_lr(lr_acc),
                         "demo_seed_val_acc": chosen[(c.model, t)], "lr_val_acc": lr_acc}
            test_jobs.append(Job("test", c, t, seed, selection=selection))
    test_res = _run_wave(out, test_jobs, executor, failures)
    return _collect(out, configs, test_res, failures)


def _run_wave(out: Path, jobs: list[Job], executor: Executor,
              failures: list[SweepFailure]) -> dict[str, dict]:
    """Results of ``jobs`` by key: read from ``out/jobs`` when present, else run and write."""
    results: dict[str, dict] = {}
    todo = []
    for job in jobs:
        stored = read_json(out / "jobs" / f"{job.key}.json")
        if stored is not None:
            results[job.key] = stored
        else:
            todo.append(job)
    for job, result, error in executor.map(run_job, todo):
        if error is not None:
            failures.append(SweepFailure(job.key, f"{type(error).__name__}: {error}"))
            continue
        write_json_atomic(out / "jobs" / f"{job.key}.json", result)
        results[job.key] = read_json(out / "jobs" / f"{job.key}.json")
    return results


def _collect(out: Path, configs: list[DaiConfig], test_res: dict[str, dict],
             failures: list[SweepFailure]) -> dict[str, dict]:
    collected = {}
    for c in configs:
        tasks = {}
        for t in c.tasks:
            key = next((k for k in test_res if k.startswith(f"test__{model_slug(c.model)}__{t}__")), None)
            if key is not None:
                tasks[t] = test_res[key]
        results = {"config": config_dict(c), "versions": package_versions(), "tasks": tasks,
                   "failed_jobs": [dataclasses.asdict(f) for f in failures
                                   if f"__{model_slug(c.model)}__" in f.job]}
        write_json_atomic(out / model_slug(c.model) / "results.json", results)
        collected[c.model] = results
    return collected
