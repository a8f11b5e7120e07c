"""Seeds → intervals: every metric of a task pooled over its independent seeds, and over tasks.

Intervals come from :mod:`dualform.experiments.stats` (percentile bootstrap, 95 %): groups are
the seeds (pooled over tasks: every task × seed), observations the test examples within a
group. The trained model is compared with the untrained one and with the random baselines as
paired differences (same seeds, same examples).
"""

from __future__ import annotations

import numpy as np

from dualform.core.attribution import compare_maps
from dualform.core.metrics import mean_of_defined
from dualform.experiments.dai.metric_names import RANDOM_BASELINES, over_every_example
from dualform.experiments.dai.results import Attribution, Intervals, SeedResult, TaskResult
from dualform.experiments.stats import Interval, bootstrap_ci, bootstrap_columns, paired_difference

#: Bootstrap draws of the per-layer bands and per-head marks (one draw serves every column).
N_BOOT_COLUMNS = 1000


def _groups(seeds: list[SeedResult], name: str) -> list[list] | None:
    rows = [r for s in seeds if (r := _row(s, name)) is not None]
    finite = any(np.isfinite(v) for r in rows for v in r)
    return rows if rows and finite else None


def _names(seeds: list[SeedResult]) -> list[str]:
    return list(dict.fromkeys(n for s in seeds for n in s.metrics))


def overall_intervals(seed_lists: list[list[SeedResult]]) -> dict[str, Interval]:
    """Each metric's mean with its interval; ``seed_lists`` holds one list of seeds per task
    (one list: a task; several: pooled over tasks, every task × seed a group)."""
    out = {}
    for name in _names([s for seeds in seed_lists for s in seeds]):
        groups = [g for seeds in seed_lists for g in (_groups(seeds, name) or [])]
        if groups:
            out[name] = bootstrap_ci(groups)
    return out


def column_intervals(seeds: list[SeedResult]) -> tuple[dict, dict]:
    """Per-layer intervals of every metric and, for per-head metrics, whether each head's
    interval excludes 0 — from the in-memory unreduced values. Columns over the same examples
    of the same seeds share one bootstrap (f2t metrics, over a subset of the examples, or a
    metric some seeds lack, get their own)."""
    blocks: dict[str, tuple[tuple[int, ...], dict[int, np.ndarray]]] = {}
    for name in _names(seeds):
        values = {i: s.metrics[name].values for i, s in enumerate(seeds) if name in s.metrics}
        if not values or any(v is None or v.ndim < 2 for v in values.values()):
            continue
        layers = {i: mean_of_defined(v, axis=2) if v.ndim == 3 else v for i, v in values.items()}
        first = next(iter(values.values()))
        blocks[f"{name}|layer"] = (first.shape[1:2], layers)
        if first.ndim == 3:
            blocks[f"{name}|head"] = (first.shape[1:], values)
    by_rows: dict[tuple, list[str]] = {}  # (seed, examples) of each block → its blocks
    for key, (_, values) in blocks.items():
        by_rows.setdefault(tuple((i, len(v)) for i, v in values.items()), []).append(key)
    per_layer, heads = {}, {}
    for rows, keys in by_rows.items():
        stacked = [np.concatenate([blocks[k][1][i].reshape(n, -1) for k in keys], 1) for i, n in rows]
        if not any(len(g) for g in stacked):
            continue
        intervals, start = bootstrap_columns(stacked, n_boot=N_BOOT_COLUMNS), 0
        for key in keys:
            shape = blocks[key][0]
            width = int(np.prod(shape))
            chunk, start = intervals[start : start + width], start + width
            name, kind = key.split("|")
            if kind == "layer":
                per_layer[name] = chunk
            else:
                heads[name] = np.array([i.excludes(0.0) for i in chunk]).reshape(shape).tolist()
    return per_layer, heads


def task_intervals(seeds: list[SeedResult], *, columns: bool = True) -> Intervals:
    per_layer, heads = column_intervals(seeds) if columns else ({}, {})
    return Intervals(overall_intervals([seeds]), per_layer, heads)


def differences(trained: list[list[SeedResult]], untrained: list[list[SeedResult]]) -> dict[str, Interval]:
    """Paired differences ``trained − untrained`` (every metric both hold, same examples) and
    ``metric − its random baseline``; one list of seeds per task (several: pooled)."""
    out = {}
    flat = [s for seeds in trained for s in seeds]
    for name, random in RANDOM_BASELINES.items():
        pair = _paired(trained, trained, name, random)
        if pair is not None:
            out[f"{name} − {random}"] = pair
    if any(untrained):
        for name in _names(flat):
            if name in RANDOM_BASELINES.values() or not over_every_example(name):
                continue  # a subset that depends on each model's answers pairs nothing
            pair = _paired(trained, untrained, name, name, first=True)
            if pair is not None:
                out[f"trained − untrained: {name}"] = pair
    return out


def _paired(a_lists, b_lists, a_name: str, b_name: str, *, first: bool = False) -> Interval | None:
    """The paired difference ``a_name − b_name`` over the seeds both hold a value for (the same
    replicate of the same task) and the same examples; ``first``: ``b`` holds each seed's first
    examples only (the untrained baseline's subset), ``a`` is cut to them."""
    a, b = [], []
    for a_seeds, b_seeds in zip(a_lists, b_lists, strict=True):
        b_by_replicate = {s.replicate: s for s in b_seeds}
        for seed in a_seeds:
            other = b_by_replicate.get(seed.replicate)
            ga, gb = _row(seed, a_name), None if other is None else _row(other, b_name)
            if ga is None or gb is None:
                continue  # e.g. this seed's finetuning diverged: nothing to pair
            ga = ga[: len(gb)] if first else ga
            if len(ga) == len(gb):
                a.append(ga)
                b.append(gb)
    if not a:
        return None
    try:
        return paired_difference(a, b)
    except ValueError:
        return None  # no finite pair


def _row(seed: SeedResult, name: str) -> list[float] | None:
    """A seed's per-example values of ``name`` (``None`` → NaN), or ``None`` if it has none."""
    summary = seed.metrics.get(name)
    if summary is None or not summary.per_example:
        return None
    return [np.nan if v is None else v for v in summary.per_example]


def pooled_attribution(icl: list[np.ndarray], ft: list[np.ndarray]) -> Attribution:
    """Attribution maps pooled over seeds: ``icl`` holds each seed's per-example ICL effects
    ``[example, layer, head]``, ``ft`` each seed's FT effects per attribution batch (mean over
    the batch's examples); a head is marked when its interval over seeds and examples (FT:
    batches) excludes 0."""
    icl_mean = np.mean([x.mean(0) for x in icl], 0)
    ft_mean = np.mean([x.mean(0) for x in ft], 0)
    cmp = compare_maps(icl_mean, ft_mean)
    shape = icl_mean.shape

    def distinct(groups):
        cols = bootstrap_columns([g.reshape(len(g), -1) for g in groups], n_boot=N_BOOT_COLUMNS)
        return np.array([c.excludes(0.0) for c in cols]).reshape(shape).tolist()

    return Attribution(cmp.icl.tolist(), cmp.ft.tolist(), cmp.spearman, cmp.kendall,
                       len(icl[0]), distinct(icl), distinct(ft))  # examples per seed


def pool_task(result: TaskResult) -> TaskResult:
    """Fill a task's intervals and paired differences from its seeds (in place; returned)."""
    result.intervals = task_intervals(result.seeds)
    if result.untrained:
        result.untrained_intervals = task_intervals(result.untrained, columns=False)
    result.differences = differences([result.seeds], [result.untrained])
    return result
