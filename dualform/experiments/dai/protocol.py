"""``dualform reproduce dai``: ICL vs explicit finetuning (Dai et al. 2023), task by task.

Per task: choose the demonstration seed (ICL) and the learning rate (FT) on the validation
split, then on the test split record ZSL / ICL / FT at the last token and compute accuracy,
Rec2FTP, SimAOU (normalised, unnormalised, random baseline), SimAM before/after, SimAM_Δ (in
the ``all`` and ``f2t`` modes), Kendall and top-k recall (token and example level), per layer
and per head, the head-by-head attribution maps, and the same metrics on an untrained
(random-weights) copy of the model. ``results.json`` is rewritten
atomically after every task; a rerun skips the tasks it already holds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dualform.core.attribution import (
    compare_maps,
    ft_head_effects,
    ft_head_effects_mean,
    icl_head_effects,
    icl_head_effects_batch,
)
from dualform.core.finetune import FinetuneDivergedError, finetune_kv
from dualform.core.finetune_grid import finetune_kv_grid
from dualform.core.prefix import PrefixRun, auto_batch_size, pad_queries
from dualform.errors import check_count, check_learning_rates, check_not_empty
from dualform.experiments.dai.attention import record_attention
from dualform.experiments.dai.conditions import (
    Record,
    demo_layout,
    demo_training_texts,
    prompt_pair,
    record_all,
)
from dualform.experiments.dai.scoring import similarity_metrics, without_ft
from dualform.infra.io import write_json_atomic
from dualform.infra.results_dir import load_results, record_entry, results_directory
from dualform.infra.versions import package_versions
from dualform.models.load import DEFAULT_MODEL, load_model, resolve_device
from dualform.tasks.prompts import (
    Example,
    Task,
    build_prompt,
    check_task_name,
    label_token_ids,
    load_task,
    prompt_tokens,
    sample_demos,
)

FULL_LR_GRID = tuple(round(m * e, 6) for e in (0.1, 0.01, 0.001, 0.0001) for m in range(1, 10))
DEFAULT_LR_GRID = (0.01, 0.005, 0.001, 0.0005)  # a slice of Dai's grid; larger rates collapse SmolLM2-135M
DEFAULT_TASKS = ("afinn-sentiment", "vader-valence", "country-region")


@dataclass
class DaiConfig:
    """Everything that defines a run; saved in ``results.json``."""

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = DEFAULT_TASKS
    shots: int = 32
    n_validation: int = 12
    n_test: int = 24
    demo_seeds: tuple[int, ...] = (1, 2)
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    layer_causal: bool = False
    reuse_prefix: bool = True  # run the demonstrations once per task (KV cache)
    batch_size: int | None = None  # None: from free memory (auto_batch_size); 1: no batching
    untrained_baseline: bool = True
    attribution: bool = True
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
        if self.batch_size is not None:
            check_count(self.batch_size, "batch_size (--batch-size; 0 there: from free memory)")
        check_learning_rates(self.lr_grid, "learning-rate grid (--lr-grid)")

    def with_full_grid(self) -> DaiConfig:
        return dataclasses.replace(self, lr_grid=FULL_LR_GRID)


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, start: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def run_dai(out_dir: str | Path, config: DaiConfig | None = None, *, progress: bool = True,
            overwrite: bool = False) -> dict:
    """Run (or resume) the experiment; returns the results dict also written to disk.

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
        results = load_results(path, config_dict(config), overwrite=overwrite)
        results["versions"] = package_versions()
        model = untrained = None
        for name in config.tasks:
            if name in results["tasks"]:
                continue  # resume: finished tasks are kept
            model = model or _load(config)
            if config.untrained_baseline:
                untrained = untrained or _load(config, untrained=True)
            entry = run_task(model, untrained, name, config, progress=progress)
            record_entry(results, name, entry, config_dict(config))
            write_json_atomic(path, results)
        write_json_atomic(path, results)
        record_attention(out, results, model=model)  # attention_example.json, for the views
    return results


def _load(config: DaiConfig, untrained: bool = False):
    return load_model(config.model, device=config.device, dtype=config.dtype, untrained=untrained,
                      device_map=config.device_map)


def run_task(model, untrained, name: str, config: DaiConfig, *, progress: bool = True) -> dict:
    """One task, in the protocol's order: demo seed on validation (ICL), learning rate on
    validation (FT, with that seed's demonstrations), then everything on the test split."""
    timer = Timer()
    task = load_task(name, seed=config.seed, n_validation=config.n_validation, n_test=config.n_test)
    label_ids = label_token_ids(model, task)
    start = time.perf_counter()
    seed_acc = {s: seed_val_accuracy(model, task, s, label_ids, config)
                for s in tqdm(config.demo_seeds, desc=f"{name}: demo seeds", disable=not progress)}
    demo_seed = choose_demo_seed(seed_acc)
    demos = sample_demos(task, config.shots, demo_seed)
    timer.add("select_demo_seed", start)
    start = time.perf_counter()
    lr_acc, tuned = lr_val_accuracies(model, task, demos, label_ids, config, progress)
    lr = choose_lr(lr_acc)
    timer.add("select_lr", start)  # the chosen rate's finetuned model is reused for the test
    selection = {"demo_seed": demo_seed, "lr": lr, "demo_seed_val_acc": seed_acc, "lr_val_acc": lr_acc}
    return evaluate_on_test(model, untrained, task, selection, label_ids, config, timer,
                            ft=tuned.get(str(lr)), progress=progress)


def lr_val_accuracies(model, task: Task, demos: list[Example], label_ids: list[int],
                      config: DaiConfig, progress: bool = False) -> tuple[dict, dict]:
    """FT validation accuracy of every rate of ``config.lr_grid`` and the finetuned models
    (each shares the frozen weights with ``model``). With batching on, the whole grid trains
    in one batched run (:func:`finetune_kv_grid`); otherwise one run per rate."""
    if config.batch_size == 1 or config.layer_causal or len(config.lr_grid) == 1:
        runs = [_finetune_or_error(model, task, demos, lr, config)
                for lr in tqdm(config.lr_grid, desc=f"{task.name}: lr grid", disable=not progress)]
    else:
        texts = demo_training_texts(model, task, demos, keep_separator=config.keep_separator)
        runs = finetune_kv_grid(model, texts, config.lr_grid, progress=progress)
    acc = {str(lr): _ft_val_accuracy(model, task, demos, run, label_ids, config)
           for lr, run in zip(config.lr_grid, runs, strict=True)}
    tuned = {str(lr): run for lr, run in zip(config.lr_grid, runs, strict=True)
             if not isinstance(run, FinetuneDivergedError)}
    return acc, tuned


def seed_val_accuracy(model, task: Task, demo_seed: int, label_ids: list[int], config: DaiConfig) -> float:
    """ICL validation accuracy with the demonstrations of ``demo_seed``."""
    demos = sample_demos(task, config.shots, demo_seed)
    return _val_accuracy(model, task, demos, label_ids, config)


def lr_val_accuracy(model, task: Task, demos: list[Example], lr: float, label_ids: list[int],
                    config: DaiConfig) -> float | str:
    """FT validation accuracy at ``lr`` (``"diverged: …"`` when the loss diverged)."""
    run = _finetune_or_error(model, task, demos, lr, config)
    return _ft_val_accuracy(model, task, demos, run, label_ids, config)


def _finetune_or_error(model, task: Task, demos: list[Example], lr: float, config: DaiConfig):
    try:
        return _finetune(model, task, demos, lr, config)
    except FinetuneDivergedError as err:
        return err


def _ft_val_accuracy(model, task: Task, demos: list[Example], run, label_ids: list[int],
                     config: DaiConfig) -> float | str:
    """Validation accuracy of a finetuning run, or ``"diverged: …"`` for its error."""
    if isinstance(run, FinetuneDivergedError):
        return f"diverged: {run}"
    return _val_accuracy(model, task, demos, label_ids, config, ft_model=run.model)


def choose_demo_seed(seed_acc: dict) -> int:
    """The seed with the best ICL validation accuracy (the first of ties)."""
    return max(seed_acc, key=seed_acc.get)


def choose_lr(lr_acc: dict[str, float | str]) -> float | None:
    """The rate with the best FT validation accuracy, the smallest of ties (gentler); diverged
    rates (strings) are skipped; ``None`` when every rate diverged."""
    scored = [(acc, -float(lr)) for lr, acc in lr_acc.items() if not isinstance(acc, str)]
    return -max(scored)[1] if scored else None


def evaluate_on_test(model, untrained, task: Task, selection: dict, label_ids: list[int],
                     config: DaiConfig, timer: Timer, *, ft=None, progress: bool = True) -> dict:
    """Everything on the test split with the selected seed and rate (``ft`` reuses a finetuned
    model of that rate), plus the untrained baseline; the task's entry of ``results.json``."""
    demos = sample_demos(task, config.shots, selection["demo_seed"])
    lr = selection["lr"]
    out = {"task": task.name, "template": task.template, "label_words": task.label_words,
           "shots": config.shots, "n_test": len(task.test), "selection": selection}
    out.update(evaluate(model, task, demos, lr, label_ids, config, timer, progress=progress, ft=ft))
    if untrained is not None:
        start = time.perf_counter()
        out["untrained"] = evaluate(untrained, task, demos, lr, label_ids,
                                    dataclasses.replace(config, attribution=False), Timer(),
                                    progress=progress)
        timer.add("untrained_baseline", start)
    out["timing_s"] = timer.seconds
    return out


def evaluate(model, task: Task, demos: list[Example], lr: float | None, label_ids: list[int],
             config: DaiConfig, timer: Timer, *, progress: bool = True, ft=None) -> dict:
    """ZSL/ICL/FT on the test split, then every metric; ``lr`` may be ``None`` (FT diverged)."""
    start = time.perf_counter()
    diverged = None
    if ft is None:
        ft = _finetune_or_error(model, task, demos, lr, config) if lr is not None else None
        if isinstance(ft, FinetuneDivergedError):  # e.g. the untrained copy at the chosen rate
            ft, diverged = None, str(ft)
    timer.add("finetune", start)
    pairs = [prompt_pair(model, task, demos, example) for example in task.test]
    gold = [example.label for example in task.test]
    start = time.perf_counter()
    recs = _records(model, ft.model if ft else model, pairs, label_ids, config)
    timer.add("record_conditions", start)
    attribution = None
    if config.attribution and ft is not None:
        start = time.perf_counter()
        attribution = _attribution(model, ft, pairs, gold, label_ids, config,
                                   desc=f"{task.name}: attribution", progress=progress)
        timer.add("attribution", start)
    start = time.perf_counter()
    train_q = _training_queries(model, task, demos, batched=config.batch_size != 1,
                                keep_separator=config.keep_separator)
    ranked = demo_layout(model, task, demos).ranked(keep_separator=config.keep_separator)
    out = similarity_metrics(recs, np.array(gold), pairs, train_q, ranked, seed=config.seed,
                             scaled_queries=config.scaled_queries)
    if ft is None:  # no finetuned model: every number involving FT is left out, never faked
        out = without_ft(out, diverged or "every learning rate diverged on validation")
    out["ft_diverged"] = ft is None
    if attribution is not None:
        out["attribution"] = attribution
    timer.add("metrics", start)
    return out


def _attribution(model, ft, pairs, gold: list[int], label_ids: list[int], config: DaiConfig,
                 *, desc: str, progress: bool) -> dict:
    """Mean head-attribution maps of ICL and FT over the test queries and their agreement: on
    the shared demonstration prefix in batches, or one full run per query (reuse off)."""
    head = pairs[0].icl
    n_prefix = head.demo_start + head.n_demo_tokens
    if not config.reuse_prefix:
        icl = [icl_head_effects(model, p.icl.tokens, p.demo_slice, label_ids, g)
               for p, g in tqdm(list(zip(pairs, gold, strict=True)), desc=desc, disable=not progress)]
        ft_maps = [ft_head_effects(ft, p.zsl.tokens, label_ids, g) for p, g in zip(pairs, gold, strict=True)]
        return compare_maps(np.mean(icl, 0), np.mean(ft_maps, 0)).to_dict()
    run = PrefixRun(model, head.tokens[:, :n_prefix], hooks=("v",))
    longest = max(p.icl.tokens.shape[-1] for p in pairs)
    size = config.batch_size or auto_batch_size(model, longest, longest - n_prefix, backward=True)
    icl_sum, ft_sum = 0.0, 0.0
    for start in tqdm(range(0, len(pairs), size), desc=desc, disable=not progress):
        chunk, golds = pairs[start : start + size], gold[start : start + size]
        queries = [p.icl.tokens[0, n_prefix:] for p in chunk]
        icl_sum = icl_sum + icl_head_effects_batch(run, queries, pairs[0].demo_slice, label_ids, golds).sum(0)
        ft_sum = ft_sum + len(chunk) * ft_head_effects_mean(ft, [p.zsl.tokens[0] for p in chunk],
                                                           label_ids, golds)
    return compare_maps((icl_sum / len(pairs)).numpy(), (ft_sum / len(pairs)).numpy()).to_dict()


def _records(model, ft_model, pairs, label_ids: list[int], config: DaiConfig) -> dict[str, list[Record]]:
    """ZSL, ICL and FT records of every test query (prefix reuse + batching unless disabled)."""
    kw = {"reuse_prefix": config.reuse_prefix, "batch_size": config.batch_size}
    return {
        "zsl": record_all(model, [p.zsl for p in pairs], label_ids, **kw),
        "icl": record_all(model, [p.icl for p in pairs], label_ids, dual=True, **kw),
        "ft": record_all(ft_model, [p.zsl for p in pairs], label_ids, **kw),
    }


def _finetune(model, task: Task, demos: list[Example], lr: float | None, config: DaiConfig):
    if lr is None:
        return None
    texts = demo_training_texts(model, task, demos, keep_separator=config.keep_separator)
    device = None if config.device_map else config.device  # a dispatched model stays put
    return finetune_kv(model, texts, lr, device=device, layer_causal=config.layer_causal)


def _val_accuracy(model, task: Task, demos: list[Example], label_ids: list[int],
                  config: DaiConfig, ft_model=None) -> float:
    """Validation accuracy of ICL (``ft_model=None``) or of the finetuned model (zero-shot)."""
    pairs = [prompt_pair(model, task, demos, ex) for ex in task.validation]
    if ft_model is None:
        runner, prompts = model, [p.icl for p in pairs]
    else:
        runner, prompts = ft_model, [p.zsl for p in pairs]
    recs = record_all(runner, prompts, label_ids, reuse_prefix=config.reuse_prefix,
                      batch_size=config.batch_size)
    correct = sum(int(r.prediction == ex.label) for r, ex in zip(recs, task.validation, strict=True))
    return 100.0 * correct / max(len(recs), 1)


@torch.no_grad()
def _training_queries(model, task: Task, demos: list[Example], batched: bool = True, *,
                      keep_separator: bool = False) -> torch.Tensor:
    """Raw query vectors of every token of the finetuning texts (BOS dropped):
    ``[layer, n_tokens, d]``; ``batched`` runs the texts as right-padded batches of 8."""
    from dualform.probes import capture

    texts = demo_training_texts(model, task, demos, keep_separator=keep_separator)
    bos = prompt_tokens(model, build_prompt(task, [], demos[0]), check=False).demo_start
    size = 8 if batched else 1
    rows = []
    for start in range(0, len(texts), size):
        chunk = texts[start : start + size]
        batch = pad_queries(chunk, pad_id=0)
        q = capture(model, batch.tokens, hooks=("q",)).stack("q")  # [layer, batch, pos, head, d]
        for row, last in enumerate(batch.last.tolist()):
            rows.append(q[:, row, bos : last + 1].flatten(-2))  # BOS dropped, if any
    return torch.cat(rows, dim=1).float().cpu()


def config_dict(config: DaiConfig) -> dict:
    d = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
