"""``dualform reproduce dai``: ICL vs explicit finetuning (Dai et al. 2023), task by task.

Per task and for each of ``seeds`` independent replicates (its own demonstration set, hence its
own finetuning order): choose the demonstration seed (ICL) and the learning rate (FT) on the
validation split, then on the test split record ICL / FT at the last token (ZSL once: it does
not depend on the demonstrations) and compute accuracy, Rec2FTP, SimAOU (normalised,
unnormalised, random baseline), SimAM before/after, SimAM_Δ (in the ``all`` and ``f2t``
modes), Kendall and top-k recall (token and example level), per layer and per head, the
head-by-head attribution maps, and the same metrics on an untrained (random-weights) copy of
the model; then every metric's 95 % interval over seeds and test examples
(:mod:`dualform.experiments.dai.pooling`). All replicates × rates finetune in one batched run.

The protocol is a sequence of stage functions — :func:`task_context`, :func:`select`
(:func:`seed_val_accuracy`, :func:`finetune_runs`, :func:`ft_val_accuracy`), then
:func:`evaluate_task` — that :func:`run_dai` calls in one process and
:mod:`dualform.experiments.dai.sweep` calls as jobs. ``results.json``
(:class:`~dualform.experiments.dai.results.DaiResults`, with the settings of every task) is
rewritten atomically after every task; a rerun skips the tasks it already holds.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dualform.core import metrics as M
from dualform.core.attribution import compare_maps
from dualform.core.finetune import FinetuneDivergedError, finetune_kv
from dualform.core.finetune_grid import finetune_kv_rows
from dualform.errors import check_count, check_learning_rates, check_not_empty
from dualform.experiments.dai.attention import record_attention
from dualform.experiments.dai.conditions import (
    Record,
    demo_layout,
    demo_training_texts,
    prefix_run,
    prompt_pair,
    record_all,
    training_queries,
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
from dualform.infra.memory import return_freed_memory
from dualform.infra.results_dir import entry_settings, load_results, results_directory
from dualform.infra.versions import package_versions
from dualform.models.load import DEFAULT_MODEL, load_model, resolve_device
from dualform.tasks.prompts import (
    OFFLINE_TASKS,
    Example,
    Task,
    check_task_name,
    label_token_ids,
    load_task,
    sample_demos,
)

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


def run_dai(out_dir: str | Path, config: DaiConfig | None = None, *, progress: bool = True,
            overwrite: bool = False) -> DaiResults:
    """Run (or resume) the experiment; returns the results also written to ``results.json``.

    ``out_dir`` is created, checked writable and locked before any model is loaded. Tasks
    already in its ``results.json`` with the same settings are kept (new tasks are added beside
    them); other settings raise :class:`SettingsMismatchError` unless ``overwrite`` (the old
    file is renamed aside, never deleted)."""
    config = config or DaiConfig()
    resolve_device(config.device)  # a missing device or task fails here, before any work
    for name in config.tasks:
        check_task_name(name)
    with results_directory(out_dir) as out:
        path = out / "results.json"
        stored = load_results(path, config_dict(config), overwrite=overwrite)
        if not stored["tasks"]:  # nothing kept (a fresh file): written in this version
            stored["schema_version"] = SCHEMA_VERSION
        results = DaiResults.from_json(stored, path)
        results.versions = package_versions()
        model = untrained = None
        for name in config.tasks:
            if name in results.tasks:
                continue  # resume: finished tasks are kept
            model = model or _load(config)
            if config.untrained_baseline:
                untrained = untrained or _load(config, untrained=True)
            results.tasks[name] = run_task(model, untrained, name, config, progress=progress)
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


def _load(config: DaiConfig, untrained: bool = False):
    return load_model(config.model, device=config.device, dtype=config.dtype, untrained=untrained,
                      device_map=config.device_map)


def task_context(model, name: str, config: DaiConfig) -> TaskContext:
    """Load ``name`` with ``config.n_test`` test examples, or all of a smaller test split
    (rounded down to whole classes, as the balanced splits draw them)."""
    full = load_task(name, seed=config.seed, n_validation=config.n_validation)
    unit = full.n_classes
    n_test = min(config.n_test, len(full.test)) // unit * unit
    task = load_task(name, seed=config.seed, n_validation=config.n_validation, n_test=n_test)
    return TaskContext(task, label_token_ids(model, task), config)


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


def select(model, ctx: TaskContext, timer: Timer, *, progress: bool = False
           ) -> tuple[list[Selection], list]:
    """Validation choices of every replicate, and the chosen rates' finetuned models (every
    replicate × rate trains in one batched run)."""
    config = ctx.config
    start = time.perf_counter()
    seed_accs = [{s: seed_val_accuracy(model, ctx, s) for s in config.candidate_seeds(r)}
                 for r in tqdm(range(config.seeds), desc=f"{ctx.task.name}: demo seeds",
                               disable=not progress)]
    demo_seeds = [choose_demo_seed(acc) for acc in seed_accs]
    timer.add("select_demo_seed", start)
    start = time.perf_counter()
    rows = [(sample_demos(ctx.task, config.shots, s), lr) for s in demo_seeds for lr in config.lr_grid]
    n = len(config.lr_grid)
    if config.share_seeds:
        runs = finetune_runs(model, ctx, rows, progress=progress)
    else:  # the per-seed path (benchmark baseline): one batched grid per seed
        runs = [run for r in range(config.seeds)
                for run in finetune_runs(model, ctx, rows[r * n : (r + 1) * n], progress=progress)]
    selections, tuned = [], []
    for r, demo_seed in enumerate(demo_seeds):
        mine = runs[r * n : (r + 1) * n]
        lr_acc = {str(lr): ft_val_accuracy(ctx, run) for lr, run in zip(config.lr_grid, mine, strict=True)}
        lr = choose_lr(lr_acc)
        selections.append(Selection(demo_seed, lr, seed_accs[r], lr_acc))
        tuned.append(None if lr is None else mine[config.lr_grid.index(lr)])
    timer.add("select_lr", start)  # the chosen rates' finetuned models are reused for the test
    return selections, tuned


def finetune_runs(model, ctx: TaskContext, rows: list[tuple[list[Example], float]], *,
                  progress: bool = False) -> list:
    """One finetuning run per ``(demonstrations, rate)`` row (a diverged run gives its
    :class:`FinetuneDivergedError`): all rows in one batched run (:func:`finetune_kv_rows`)
    unless batching is off, the finetuning is layer-causal, or there is a single row."""
    config = ctx.config
    if not config.batched or len(rows) == 1:
        return [_finetune_or_error(model, ctx.task, demos, lr, config)
                for demos, lr in tqdm(rows, desc=f"{ctx.task.name}: finetuning", disable=not progress)]
    texts = [demo_training_texts(model, ctx.task, demos, keep_separator=config.keep_separator)
             for demos, _ in rows]
    return finetune_kv_rows(model, [(t, lr) for t, (_, lr) in zip(texts, rows, strict=True)],
                            progress=progress)


def seed_val_accuracy(model, ctx: TaskContext, demo_seed: int) -> float:
    """ICL validation accuracy with the demonstrations of ``demo_seed``."""
    demos = sample_demos(ctx.task, ctx.config.shots, demo_seed)
    return _val_accuracy(model, ctx, demos)


def _finetune_or_error(model, task: Task, demos: list[Example], lr: float, config: DaiConfig):
    try:
        return _finetune(model, task, demos, lr, config)
    except FinetuneDivergedError as err:
        return err


def ft_val_accuracy(ctx: TaskContext, run) -> float | str:
    """Validation accuracy of a finetuning run, or ``"diverged: …"`` for its error."""
    if isinstance(run, FinetuneDivergedError):
        return f"diverged: {run}"
    with run.loaded() as tuned:  # a grid row lends its weights: no copy per rate
        return _val_accuracy(tuned, ctx, None)


def choose_demo_seed(seed_acc: dict) -> int:
    """The seed with the best ICL validation accuracy (the first of ties)."""
    return max(seed_acc, key=seed_acc.get)


def choose_lr(lr_acc: dict[str, float | str]) -> float | None:
    """The rate with the best FT validation accuracy, the smallest of ties (gentler); diverged
    rates (strings) are skipped; ``None`` when every rate diverged."""
    scored = [(acc, -float(lr)) for lr, acc in lr_acc.items() if not isinstance(acc, str)]
    return -max(scored)[1] if scored else None


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


def _finetune(model, task: Task, demos: list[Example], lr: float | None, config: DaiConfig):
    if lr is None:
        return None
    texts = demo_training_texts(model, task, demos, keep_separator=config.keep_separator)
    device = None if config.device_map else config.device  # a dispatched model stays put
    return finetune_kv(model, texts, lr, device=device, layer_causal=config.layer_causal)


def _val_accuracy(model, ctx: TaskContext, demos: list[Example] | None) -> float:
    """Validation accuracy of ICL with ``demos``, or zero-shot (``demos=None``: the query
    alone, e.g. on a finetuned model)."""
    task, config = ctx.task, ctx.config
    pairs = [prompt_pair(model, task, demos or [], ex) for ex in task.validation]
    prompts = [p.icl for p in pairs] if demos is not None else [p.zsl for p in pairs]
    recs = record_all(model, prompts, ctx.label_ids, reuse_prefix=config.reuse_prefix,
                      batch_size=config.batch_size)
    return M.accuracy([r.prediction for r in recs], [ex.label for ex in task.validation])


def config_dict(config: DaiConfig) -> dict:
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
