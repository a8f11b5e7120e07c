"""Sweeps of ``reproduce dai`` over models × tasks × demo seeds × learning rates, on an executor.

The protocol is :mod:`dualform.experiments.dai.protocol`'s — the same stage functions, cut
into independent jobs in three waves:

1. ``seed`` jobs — ICL validation accuracy of every (model, task, replicate, candidate demo seed)
   (:func:`~dualform.experiments.dai.selection.seed_val_accuracy`);
2. ``lr`` jobs — FT validation accuracy of every learning rate, with the replicate's chosen seed
   (:func:`~dualform.experiments.dai.selection.finetune_runs`, ``ft_val_accuracy``);
3. ``test`` jobs — one per (model, task): every replicate on the test split with its chosen
   seed and rate, the untrained baseline and the intervals
   (:func:`~dualform.experiments.dai.protocol.evaluate_task`).

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

from dualform.experiments.dai.config import (
    DaiConfig,
    Timer,
    config_dict,
    load_run_model,
    task_context,
)
from dualform.experiments.dai.protocol import evaluate_task, pool_tasks
from dualform.experiments.dai.results import DaiResults, Selection, TaskResult
from dualform.experiments.dai.selection import (
    choose_demo_seed,
    choose_lr,
    finetune_runs,
    ft_val_accuracy,
    seed_val_accuracy,
)
from dualform.infra.executors import Executor, LocalExecutor
from dualform.infra.io import read_json, write_json_atomic
from dualform.infra.results_dir import (
    EXECUTION_ONLY,
    entry_settings,
    pin_settings,
    results_directory,
)
from dualform.infra.versions import package_versions
from dualform.tasks.prompts import sample_demos


@dataclass(frozen=True)
class Job:
    """One unit of a sweep; ``config`` is the run's :class:`DaiConfig` for one model."""

    stage: str  # "seed" | "lr" | "test"
    config: DaiConfig
    task: str
    replicate: int = 0
    demo_seed: int | None = None
    lr: float | None = None
    selections: tuple[dict, ...] | None = None  # test jobs: every replicate's validation choices

    @property
    def key(self) -> str:
        parts = [self.stage, model_slug(self.config.model), self.task]
        if self.stage != "test":
            parts += [f"rep{self.replicate}", f"seed{self.demo_seed}"]
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
        _MODELS[key] = load_run_model(config, untrained)
    return _MODELS[key]


def run_job(job: Job) -> dict:
    """Run one job (in whatever process the executor chose) with the protocol's own stage
    functions, and return its JSON-able result."""
    cfg = job.config
    model = _model(cfg)
    ctx = task_context(model, job.task, cfg)
    if job.stage == "seed":
        return {"val_acc": seed_val_accuracy(model, ctx, job.demo_seed)}
    if job.stage == "lr":
        demos = sample_demos(ctx.task, cfg.shots, job.demo_seed)
        (run,) = finetune_runs(model, ctx, [(demos, job.lr)])
        return {"val_acc": ft_val_accuracy(ctx, run)}
    untrained = _model(cfg, untrained=True) if cfg.untrained_baseline else None
    selections = [Selection.from_json(s) for s in job.selections]
    return evaluate_task(model, untrained, ctx, selections, Timer(), progress=False).to_json()


@dataclass
class SweepFailure:
    job: str
    error: str


def run_sweep(out_dir: str | Path, config: DaiConfig, models: Sequence[str] | None = None,
              executor: Executor | None = None, *, overwrite: bool = False) -> dict[str, DaiResults]:
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
          executor: Executor | None = None) -> dict[str, DaiResults]:
    """Run (or resume) the sweep; returns ``{model: results}`` (also written per model).

    ``config.lr_grid``, ``config.seeds``, ``config.demo_seeds`` and ``config.tasks`` span the
    grid; ``models`` defaults to ``[config.model]``. Failed jobs are listed under
    ``"failed_jobs"`` and the tasks that depend on them are left out; rerunning retries them.
    """
    out = Path(out_dir)
    executor = executor or LocalExecutor()
    configs = [dataclasses.replace(config, model=m) for m in (models or [config.model])]
    failures: list[SweepFailure] = []
    units = [(c, t, r) for c in configs for t in c.tasks for r in range(c.seeds)]

    seed_jobs = [Job("seed", c, t, r, s) for c, t, r in units for s in c.candidate_seeds(r)]
    seed_res = _run_wave(out, seed_jobs, executor, failures)
    seed_acc = {}
    for c, t, r in units:
        accs = {s: seed_res.get(Job("seed", c, t, r, s).key) for s in c.candidate_seeds(r)}
        if all(a is not None for a in accs.values()):
            seed_acc[(c.model, t, r)] = {s: a["val_acc"] for s, a in accs.items()}

    def lr_job(c, t, r, lr):
        return Job("lr", c, t, r, choose_demo_seed(seed_acc[(c.model, t, r)]), lr)

    chosen = [u for u in units if (u[0].model, u[1], u[2]) in seed_acc]
    lr_res = _run_wave(out, [lr_job(c, t, r, lr) for c, t, r in chosen for lr in c.lr_grid],
                       executor, failures)
    selections: dict[tuple, list] = {}
    for c, t, r in chosen:
        lr_acc = {str(lr): lr_res.get(lr_job(c, t, r, lr).key) for lr in c.lr_grid}
        if any(v is None for v in lr_acc.values()):
            continue
        lr_acc = {k: v["val_acc"] for k, v in lr_acc.items()}
        acc = seed_acc[(c.model, t, r)]
        sel = Selection(choose_demo_seed(acc), choose_lr(lr_acc), acc, lr_acc)
        selections.setdefault((c.model, t), []).append(sel.to_json())

    test_jobs = [Job("test", c, t, selections=tuple(selections[(c.model, t)]))
                 for c in configs for t in c.tasks
                 if len(selections.get((c.model, t), [])) == c.seeds]
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
             failures: list[SweepFailure]) -> dict[str, DaiResults]:
    collected = {}
    for c in configs:
        results = DaiResults(config_dict(c), package_versions(), failed_jobs=[
            dataclasses.asdict(f) for f in failures if f"__{model_slug(c.model)}__" in f.job])
        for t in c.tasks:
            stored = test_res.get(Job("test", c, t).key)
            if stored is not None:
                results.tasks[t] = TaskResult.from_json(stored)
                results.settings[t] = entry_settings(config_dict(c))
        pool_tasks(results)
        results.save(out / model_slug(c.model) / "results.json")
        collected[c.model] = results
    return collected
