"""The validation stage of ``reproduce dai``: each replicate chooses its demonstration seed (ICL
validation accuracy) and then its learning rate (FT validation accuracy, with that seed's
demonstrations); every replicate × rate finetunes in batched runs (:func:`finetune_runs`)."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from dualform.core import metrics as M
from dualform.core.finetune import FinetuneDivergedError, finetune_kv
from dualform.core.finetune_grid import TrainedRows, finetune_kv_rows
from dualform.core.prefix import logits_at, pad_queries
from dualform.experiments.dai.conditions import demo_training_texts, prompt_pair, record_all
from dualform.experiments.dai.config import DaiConfig, TaskContext, Timer
from dualform.experiments.dai.results import Selection
from dualform.tasks.prompts import Example, Task, sample_demos


def select(model, ctx: TaskContext, timer: Timer, *, progress: bool = False
           ) -> tuple[list[Selection], list]:
    """Validation choices of every replicate, and the chosen rates' finetuned models (every
    replicate × rate trains in batched runs)."""
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
    accuracies = ft_val_accuracies(ctx, runs)
    selections, tuned = [], []
    for r, demo_seed in enumerate(demo_seeds):
        mine = runs[r * n : (r + 1) * n]
        lr_acc = {str(lr): acc for lr, acc in zip(config.lr_grid, accuracies[r * n : (r + 1) * n], strict=True)}
        lr = choose_lr(lr_acc)
        selections.append(Selection(demo_seed, lr, seed_accs[r], lr_acc))
        tuned.append(None if lr is None else mine[config.lr_grid.index(lr)])
    timer.add("select_lr", start)  # the chosen rates' finetuned models are reused for the test
    return selections, tuned


def finetune_runs(model, ctx: TaskContext, rows: list[tuple[list[Example], float]], *,
                  progress: bool = False) -> list:
    """One finetuning run per ``(demonstrations, rate)`` row (a diverged run gives its
    :class:`FinetuneDivergedError`): all rows in batched runs (:func:`finetune_kv_rows`: one
    on a GPU, equal ones of at most ``CPU_MAX_ROWS`` rows on a CPU) unless batching is off, the finetuning is
    layer-causal, or there is a single row."""
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
    """:func:`finetune_kv` on ``demos`` at ``lr``, or its :class:`FinetuneDivergedError`."""
    texts = demo_training_texts(model, task, demos, keep_separator=config.keep_separator)
    device = None if config.device_map else config.device  # a dispatched model stays put
    try:
        return finetune_kv(model, texts, lr, device=device, layer_causal=config.layer_causal)
    except FinetuneDivergedError as err:
        return err


def ft_val_accuracy(ctx: TaskContext, run) -> float | str:
    """Validation accuracy of a finetuning run, or ``"diverged: …"`` for its error."""
    if isinstance(run, FinetuneDivergedError):
        return f"diverged: {run}"
    with run.loaded() as tuned:  # a grid row lends its weights: no copy per rate
        return _val_accuracy(tuned, ctx, None)


def ft_val_accuracies(ctx: TaskContext, runs: list) -> list[float | str]:
    """:func:`ft_val_accuracy` of each run; the rows of one batched finetuning run are validated
    together, in one forward computing every row (:meth:`TrainedRows.as_grid`)."""
    accs: list[float | str | None] = [None] * len(runs)
    batches: dict[int, tuple] = {}
    for i, run in enumerate(runs):
        if not isinstance(run, FinetuneDivergedError) and run.row is not None:
            batches.setdefault(id(run.row.rows), (run.row.rows, []))[1].append((i, run.row.r))
    gold = [ex.label for ex in ctx.task.validation]
    for trained, members in batches.values():
        predictions = _grid_predictions(trained, ctx)
        for i, r in members:
            accs[i] = M.accuracy(predictions[r], gold)
    return [ft_val_accuracy(ctx, run) if acc is None else acc for acc, run in zip(accs, runs, strict=True)]


def _grid_predictions(trained: TrainedRows, ctx: TaskContext) -> list[list[int]]:
    """Zero-shot validation predictions of every row of a batched finetuning run, ``[row][example]``:
    the validation queries, right-padded, repeated once per row, in one forward."""
    prompts = [prompt_pair(trained.scratch, ctx.task, [], ex).zsl.tokens[0] for ex in ctx.task.validation]
    batch = pad_queries(prompts, pad_id=0)
    device = next(trained.scratch.parameters()).device
    tokens, last = batch.tokens.repeat(trained.n_rows, 1).to(device), batch.last.repeat(trained.n_rows)
    with trained.as_grid() as grid, torch.no_grad(), logits_at(grid, last) as pick:
        logits = pick(grid(tokens))[:, 0, ctx.label_ids]
    return logits.argmax(-1).view(trained.n_rows, -1).tolist()


def choose_demo_seed(seed_acc: dict) -> int:
    """The seed with the best ICL validation accuracy (the first of ties)."""
    return max(seed_acc, key=seed_acc.get)


def choose_lr(lr_acc: dict[str, float | str]) -> float | None:
    """The rate with the best FT validation accuracy, the smallest of ties (gentler); diverged
    rates (strings) are skipped; ``None`` when every rate diverged."""
    scored = [(acc, -float(lr)) for lr, acc in lr_acc.items() if not isinstance(acc, str)]
    return -max(scored)[1] if scored else None


def _val_accuracy(model, ctx: TaskContext, demos: list[Example] | None) -> float:
    """Validation accuracy of ICL with ``demos``, or zero-shot (``demos=None``: the query
    alone, e.g. on a finetuned model)."""
    task, config = ctx.task, ctx.config
    pairs = [prompt_pair(model, task, demos or [], ex) for ex in task.validation]
    prompts = [p.icl for p in pairs] if demos is not None else [p.zsl for p in pairs]
    recs = record_all(model, prompts, ctx.label_ids, reuse_prefix=config.reuse_prefix,
                      batch_size=config.batch_size)
    return M.accuracy([r.prediction for r in recs], [ex.label for ex in task.validation])
