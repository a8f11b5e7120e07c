"""``dualform reproduce dai``: ICL vs explicit finetuning (Dai et al. 2023), task by task.

Per task and for each of ``seeds`` independent replicates (its own demonstration set, hence its
own finetuning order): choose the demonstration seed (ICL) and the learning rate (FT) on the
validation split, then on the test split record ICL / FT at the last token (ZSL once: it does
not depend on the demonstrations) and compute accuracy, Rec2FTP, SimAOU (normalised,
unnormalised, random baseline), SimAM before/after, SimAM_Δ (in the ``all`` and ``f2t``
modes), Kendall and top-k recall (token and example level), per layer and per head, the
head-by-head attribution maps, and the same metrics on an untrained (random-weights) copy of
the model; then every metric's 95 % interval over seeds and test examples
(:mod:`dualform.experiments.dai.pooling`). All replicates × rates finetune in batched runs
(:func:`dualform.core.finetune_grid.finetune_kv_rows`).

The protocol is a sequence of stage functions — ``config.task_context``, the validation stage
(:mod:`dualform.experiments.dai.selection`: ``select``, i.e. ``seed_val_accuracy``,
``finetune_runs``, ``ft_val_accuracy``), then :func:`evaluate_task` — that :func:`run_dai` calls
in one process and :mod:`dualform.experiments.dai.sweep` calls as jobs. ``results.json``
(:class:`~dualform.experiments.dai.results.DaiResults`, with the settings of every task) is
rewritten atomically after every task; a rerun skips the tasks it already holds. With
``workers > 1`` several tasks run at once (:mod:`dualform.experiments.dai.workers`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from dualform.core.attribution import compare_maps
from dualform.core.finetune import FinetuneDivergedError
from dualform.experiments.dai.attention import record_attention
from dualform.experiments.dai.conditions import (
    Record,
    demo_layout,
    prefix_run,
    prompt_pair,
    record_all,
    training_queries,
)
from dualform.experiments.dai.config import (
    DaiConfig,
    TaskContext,
    Timer,
    config_dict,
    load_run_model,
    task_context,
)
from dualform.experiments.dai.heads import head_effects
from dualform.experiments.dai.pooling import (
    differences,
    overall_intervals,
    pool_task,
    pooled_attribution,
)
from dualform.experiments.dai.results import (
    SCHEMA_VERSION,
    Attribution,
    DaiResults,
    Intervals,
    SeedResult,
    Selection,
    TaskResult,
)
from dualform.experiments.dai.scoring import similarity_metrics, without_ft
from dualform.experiments.dai.selection import finetune_runs, select
from dualform.experiments.dai.workers import run_tasks
from dualform.infra.memory import return_freed_memory
from dualform.infra.results_dir import entry_settings, load_results, results_directory
from dualform.infra.versions import package_versions
from dualform.models.cpu_matmul import backend_setting, cpu_matmul_backend
from dualform.models.load import resolve_device
from dualform.tasks.prompts import (
    Example,
    check_task_name,
    sample_demos,
)


def run_dai(out_dir: str | Path, config: DaiConfig | None = None, *, progress: bool = True,
            overwrite: bool = False) -> DaiResults:
    """Run (or resume) the experiment; returns the results also written to ``results.json``.

    ``out_dir`` is created, checked writable and locked before any model is loaded. Tasks
    already in its ``results.json`` with the same settings are kept (new tasks are added beside
    them); other settings raise :class:`SettingsMismatchError` unless ``overwrite`` (the old
    file is renamed aside, never deleted)."""
    config = config or DaiConfig()
    resolve_device(config.device)  # a missing device, task or matmul setting fails here, before any work
    backend_setting()
    for name in config.tasks:
        check_task_name(name)
    with results_directory(out_dir) as out:
        path = out / "results.json"
        stored = load_results(path, config_dict(config), overwrite=overwrite)
        if not stored["tasks"]:  # nothing kept (a fresh file): written in this version
            stored["schema_version"] = SCHEMA_VERSION
        results = DaiResults.from_json(stored, path)
        results.versions = package_versions()
        if resolve_device(config.device).type == "cpu":
            results.versions["cpu_matmul"] = cpu_matmul_backend()  # float32 linears' path
        todo = [name for name in config.tasks if name not in results.tasks]  # resume: kept
        order = [*results.tasks, *todo]
        model = load_run_model(config) if todo else None
        untrained = load_run_model(config, untrained=True) if todo and config.untrained_baseline else None
        run = partial(run_task, config=config, progress=progress)  # run(model, untrained, name)
        for name, result in run_tasks(run, todo, (model, untrained), workers=config.workers):
            results.tasks[name] = result
            results.tasks = {n: results.tasks[n] for n in order if n in results.tasks}
            results.settings[name] = entry_settings(config_dict(config))
            results.save(path)
        pool_tasks(results)
        results.save(path)
        record_attention(out, results, model=model)  # attention_example.json, for the views
    return results


def pool_tasks(results: DaiResults) -> DaiResults:
    """Intervals pooled over every task × seed, and the pooled paired differences."""
    tasks = list(results.tasks.values())
    results.pooled = Intervals(overall_intervals([t.seeds for t in tasks]))
    results.pooled_untrained = Intervals(overall_intervals([t.untrained for t in tasks]))
    results.pooled_differences = differences([t.seeds for t in tasks], [t.untrained for t in tasks])
    return results


def run_task(model, untrained, name: str, config: DaiConfig, *, progress: bool = True) -> TaskResult:
    """One task, in the protocol's order, for every replicate: demo seed on validation (ICL),
    learning rate on validation (FT, with that seed's demonstrations), then the test split."""
    timer = Timer()
    ctx = task_context(model, name, config)
    selections, tuned = select(model, ctx, timer, progress=progress)
    return_freed_memory()  # the learning-rate grid's copies are gone
    result = evaluate_task(model, untrained, ctx, selections, timer, tuned=tuned, progress=progress)
    return_freed_memory()  # else the next task's peak stacks on this one's freed heap
    return result


def evaluate_task(model, untrained, ctx: TaskContext, selections: list[Selection], timer: Timer,
                  *, tuned: list | None = None, progress: bool = True) -> TaskResult:
    """Every replicate on the test split with its selected seed and rate (``tuned`` reuses
    finetuned models of those rates), the untrained baseline, and the intervals over seeds;
    ZSL runs once per model (it does not depend on the demonstrations)."""
    config, task = ctx.config, ctx.task
    demos = [sample_demos(task, config.shots, s.demo_seed) for s in selections]
    start = time.perf_counter()
    tuned = tuned if tuned is not None else _finetune_chosen(model, ctx, demos, selections)
    timer.add("finetune", start)
    seeds, icl_effects, ft_effects = [], [], []
    zsl = _zsl_records(model, ctx, demos[0], timer) if config.share_seeds else None
    for r, (sel, ds, ft) in enumerate(zip(selections, demos, tuned, strict=True)):
        out = evaluate_seed(model, ctx, r, sel, ds, ft, zsl or _zsl_records(model, ctx, ds, timer), timer,
                            attribution=config.attribution, progress=progress)
        seeds.append(out.seed)
        if out.icl_effects is not None:
            icl_effects.append(out.icl_effects)
            ft_effects.append(out.ft_effects)
    result = TaskResult(task.name, task.template, list(task.label_words), config.shots,
                        len(task.test), n_attribution(ctx) if icl_effects else 0, seeds)
    if untrained is not None:
        start = time.perf_counter()
        sub = ctx.first(config.n_untrained)  # a control: its first examples pair with the trained
        ft_u = _finetune_chosen(untrained, sub, demos, selections)
        zsl_u = _zsl_records(untrained, sub, demos[0], Timer()) if config.share_seeds else None
        result.untrained = [evaluate_seed(untrained, sub, r, sel, ds, ft,
                                          zsl_u or _zsl_records(untrained, sub, ds, Timer()), Timer(),
                                          attribution=False, progress=progress).seed
                            for r, (sel, ds, ft) in enumerate(zip(selections, demos, ft_u, strict=True))]
        result.n_untrained = len(sub.task.test)
        timer.add("untrained_baseline", start)
    start = time.perf_counter()
    if icl_effects:
        result.attribution = pooled_attribution(icl_effects, ft_effects)
    pool_task(result)
    result.release_values()  # the intervals are in; the unreduced values are not stored
    timer.add("intervals", start)
    result.timing_s = timer.seconds
    return result


def _finetune_chosen(model, ctx: TaskContext, demos: list[list[Example]],
                     selections: list[Selection]) -> list:
    """Each replicate's run at its chosen rate (``None`` where every rate diverged on
    validation; its :class:`FinetuneDivergedError` where it diverged here, e.g. the untrained
    copy at the chosen rate)."""
    rows = [(ds, s.lr) for ds, s in zip(demos, selections, strict=True) if s.lr is not None]
    if ctx.config.share_seeds:
        runs = iter(finetune_runs(model, ctx, rows))
    else:
        runs = iter([run for row in rows for run in finetune_runs(model, ctx, [row])])
    return [None if s.lr is None else next(runs) for s in selections]


def n_attribution(ctx: TaskContext) -> int:
    n = ctx.config.n_attribution
    return len(ctx.task.test) if n is None else min(n, len(ctx.task.test))


@dataclass
class SeedOutcome:
    """A replicate's stored result and its per-example attribution effects (in memory)."""

    seed: SeedResult
    icl_effects: np.ndarray | None = None  # [example, layer, head]
    ft_effects: np.ndarray | None = None  # [attribution batch, layer, head]


def _zsl_records(model, ctx: TaskContext, demos: list[Example], timer: Timer) -> list[Record]:
    """ZSL records of the test split (the query alone: the same for every replicate)."""
    start = time.perf_counter()
    pairs = [prompt_pair(model, ctx.task, demos, example) for example in ctx.task.test]
    recs = record_all(model, [p.zsl for p in pairs], ctx.label_ids,
                      reuse_prefix=ctx.config.reuse_prefix, batch_size=ctx.config.batch_size)
    timer.add("record_conditions", start)
    return recs


def evaluate_seed(model, ctx: TaskContext, replicate: int, selection: Selection,
                  demos: list[Example], ft, zsl: list[Record], timer: Timer, *,
                  attribution: bool = True, progress: bool = True) -> SeedOutcome:
    """ICL and FT on the test split for one replicate (ZSL given), then every metric; ``ft``
    is ``None`` when every rate diverged on validation, or the error of the run that diverged
    at the chosen rate (FT's numbers are then left out, :func:`without_ft`)."""
    config = ctx.config
    diverged = None
    if isinstance(ft, FinetuneDivergedError):
        ft, diverged = None, str(ft)
    pairs = [prompt_pair(model, ctx.task, demos, example) for example in ctx.task.test]
    gold = ctx.test_gold
    start = time.perf_counter()
    kw = {"reuse_prefix": config.reuse_prefix, "batch_size": config.batch_size}
    run = prefix_run(model, pairs[0].icl) if config.reuse_prefix else None  # records + attribution
    recs = {"zsl": zsl,
            "icl": record_all(model, [p.icl for p in pairs], ctx.label_ids, dual=True, run=run, **kw)}
    with ft.loaded() if ft else nullcontext(model) as tuned:
        recs["ft"] = record_all(tuned, [p.zsl for p in pairs], ctx.label_ids, **kw)
    timer.add("record_conditions", start)
    effects = (None, None)
    if attribution and ft is not None:
        start = time.perf_counter()
        n = n_attribution(ctx)
        effects = head_effects(model, ft, pairs[:n], gold[:n], ctx.label_ids,
                               reuse_prefix=config.reuse_prefix, batch_size=config.batch_size,
                               desc=f"{ctx.task.name}: attribution", progress=progress, run=run)
        timer.add("attribution", start)
    start = time.perf_counter()
    train_q = training_queries(model, ctx.task, demos, batched=config.batch_size != 1,
                               keep_separator=config.keep_separator)
    ranked = demo_layout(model, ctx.task, demos).ranked(keep_separator=config.keep_separator)
    scored = similarity_metrics(recs, np.array(gold), pairs, train_q, ranked,
                                seed=config.seed + replicate, scaled_queries=config.scaled_queries)
    if ft is None:  # no finetuned model: every number involving FT is left out, never faked
        scored = without_ft(scored, diverged or "every learning rate diverged on validation")
    seed = SeedResult.from_scored(replicate, selection, scored, ft_diverged=ft is None)
    if effects[0] is not None:
        icl_mean, ft_mean = effects[0].mean(0), effects[1].mean(0)
        cmp = compare_maps(icl_mean, ft_mean)
        seed.attribution = Attribution(cmp.icl.tolist(), cmp.ft.tolist(), cmp.spearman,
                                       cmp.kendall, len(effects[0]))
    timer.add("metrics", start)
    return SeedOutcome(seed, *effects)
