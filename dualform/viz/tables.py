"""Paper-style tables (Dai et al. Tables 2–5 layout) from a ``results.json``, for terminal and README.

Three tables (:data:`TABLES`), each a title and its columns of metric names: the paper's metrics
over all test examples (:data:`COLUMNS`, with the paper's numbers), the attention to the
training examples (Kendall, top-k recall, random baselines), and the similarity metrics in the
``f2t`` mode; then the paired differences (trained − untrained model, metric − random baseline).
Every measured cell is a mean with its 95 % interval over seeds and test examples,
``0.377 [0.331, 0.420]``; a ratio resting on fewer than
:data:`~dualform.experiments.dai.results.MIN_DENOMINATOR` examples is flagged. A metric that does
not apply reads ``n/a``, one that involves a finetuning that diverged ``diverged``, one missing
``–``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from dualform.experiments.dai import metric_names as N
from dualform.experiments.dai import results as R
from dualform.experiments.stats import Interval
from dualform.viz.terminal import print_table

#: Dai et al. (2023), averages over their six tasks (reference §1), for comparison.
PAPER = {
    "GPT 1.3B (paper)": {"rec2ftp": 85.56, "simaou": 0.186, "simaou_random": 0.002,
                         "simam_before": 0.338, "simam_after": 0.442, "kendall": 0.193},
    "GPT 2.7B (paper)": {"rec2ftp": 89.39, "simaou": 0.225, "simaou_random": -0.001,
                         "simam_before": 0.355, "simam_after": 0.434, "kendall": 0.214},
}
#: (column title, metric name, digits)
METRIC_COLUMNS = [
    ("acc ZSL %", N.ACCURACY["zsl"], 1), ("acc FT %", N.ACCURACY["ft"], 1),
    ("acc ICL %", N.ACCURACY["icl"], 1), ("Rec2FTP %", N.REC2FTP, 1),
    ("SimAOU", N.SIMAOU, 3), ("SimAOU unnorm.", N.SIMAOU_UNNORM, 3),
    ("SimAOU rand.", N.SIMAOU_RANDOM, 3), ("SimAM before", N.SIMAM_BEFORE, 3),
    ("SimAM after", N.SIMAM_AFTER, 3), ("SimAM_Δ", N.SIMAM_DELTA, 3),
    ("Kendall", N.KENDALL, 3),
]
COLUMNS = [(title, name) for title, name, _ in METRIC_COLUMNS] + [("head attr. ρ", "attribution")]
TRAINING_COLUMNS = [
    ("Kendall token", N.KENDALL, 3), ("rand.", N.KENDALL_RANDOM, 3),
    ("Kendall example", N.KENDALL_EXAMPLE, 3), ("rand.", N.KENDALL_EXAMPLE_RANDOM, 3),
    ("top-100 recall token", N.TOPK_TOKEN, 3), ("rand.", N.TOPK_TOKEN_RANDOM, 3),
    ("top-5 recall example", N.TOPK_EXAMPLE, 3), ("rand.", N.TOPK_EXAMPLE_RANDOM, 3),
]
F2T_COLUMNS = [("n_f2t", "n_f2t", 0)] + [
    (title, N.f2t(name), 3) for title, name in (
        ("SimAOU", N.SIMAOU), ("SimAOU unnorm.", N.SIMAOU_UNNORM), ("SimAOU rand.", N.SIMAOU_RANDOM),
        ("SimAM before", N.SIMAM_BEFORE), ("SimAM after", N.SIMAM_AFTER), ("SimAM_Δ", N.SIMAM_DELTA))]
NOT_APPLICABLE = "n/a"
DIVERGED = "diverged"
#: Paired differences shown in the second table: (column title, difference key).
DIFFERENCE_COLUMNS = [
    ("SimAOU − random", f"{N.SIMAOU} − {N.SIMAOU_RANDOM}"),
    ("Kendall − random", f"{N.KENDALL} − {N.KENDALL_RANDOM}"),
    *((f"{title} − untrained", f"trained − untrained: {name}") for title, name in (
        ("acc ICL %", N.ACCURACY["icl"]), ("SimAOU", N.SIMAOU), ("SimAOU unnorm.", N.SIMAOU_UNNORM),
        ("SimAM after", N.SIMAM_AFTER), ("SimAM_Δ", N.SIMAM_DELTA), ("Kendall", N.KENDALL))),
]


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def interval_cell(interval: Interval | None, digits: int = 3, *, ratio: bool = False) -> str:
    """``mean [low, high]``; ``ratio`` adds ``⚠ n=K`` (K examples) below the minimum denominator."""
    if interval is None or math.isnan(interval.mean):
        return "–"
    cell = f"{interval.mean:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    if ratio and interval.n < N.MIN_DENOMINATOR:
        cell += f" ⚠ n={interval.n}"
    return cell


@dataclass(frozen=True)
class TableSpec:
    """A table: its title, ``(header, metric name, digits)`` columns and whether the paper's
    rows and the head-attribution column belong to it."""

    title: str
    columns: list[tuple[str, str, int]]
    paper: bool = False

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(c, k) for c, k, _ in self.columns] + ([("head attr. ρ", "attribution")] if self.paper else [])


MAIN = TableSpec("ICL vs finetuning (Dai et al. layout; all test examples)", METRIC_COLUMNS, paper=True)
TABLES = (
    MAIN,
    TableSpec("Attention to the training examples (Kendall τ, top-k recall; random baselines)",
              TRAINING_COLUMNS),
    TableSpec("f2t mode: examples both fix (ZSL wrong, FT right, ICL right)", F2T_COLUMNS),
)


def intervals_row(intervals: R.Intervals, attribution: R.Attribution | None = None,
                  seeds: list[R.SeedResult] = (), spec: TableSpec = MAIN) -> dict[str, str]:
    """One row of ``spec`` from intervals of a task (or of its untrained baseline, or pooled)
    and the seeds behind them: a missing cell reads ``n/a`` when a seed's notes say the metric
    does not apply, ``diverged`` when every seed's finetuning diverged."""
    diverged = bool(seeds) and all(s.ft_diverged for s in seeds)
    row = {}
    for _, name, digits in spec.columns:
        if name == "n_f2t":
            row[name] = str(sum(s.n_f2t for s in seeds)) if seeds else "–"
            continue
        value = interval_cell(intervals.get(name), digits, ratio=name in (N.REC2FTP, *N.F2T_NAMES))
        if value == "–" and any(s.not_applicable(name) for s in seeds):
            value = NOT_APPLICABLE
        elif value == "–" and diverged:
            value = DIVERGED
        row[name] = value
    if spec.paper:
        row["attribution"] = (DIVERGED if diverged else "–") if attribution is None else \
            f"{_fmt(attribution.spearman)} ({attribution.n_examples} ex.)"
    return row


def paper_row(p: dict) -> dict[str, str]:
    row = {name: "–" for _, name in COLUMNS}
    row.update({N.REC2FTP: _fmt(p["rec2ftp"], 1), N.SIMAOU: _fmt(p["simaou"]),
                N.SIMAOU_RANDOM: _fmt(p["simaou_random"]), N.SIMAM_BEFORE: _fmt(p["simam_before"]),
                N.SIMAM_AFTER: _fmt(p["simam_after"]), N.KENDALL: _fmt(p["kendall"])})
    return row


def dai_rows(results: R.DaiResults, spec: TableSpec = MAIN, *,
             short: bool = False) -> list[tuple[str, dict[str, str]]]:
    """Rows per task (trained, untrained), pooled over tasks, then (main table) the paper's.
    Labels name the model (``afinn-sentiment (smollm2-135m)``), or with ``short`` leave it to
    the title (``afinn-sentiment``, then ``  untrained`` under it): narrow terminals fit more
    columns beside them."""
    model = results.model
    of_model = "" if short else f" ({model})"
    rows = []
    for name, t in results.tasks.items():
        rows.append((name + of_model, intervals_row(t.intervals, t.attribution, t.seeds, spec)))
        if t.untrained:
            rows.append(("  untrained" if short else f"{name} (untrained {model})",
                         intervals_row(t.untrained_intervals, None, t.untrained, spec)))
    if len(results.tasks) > 1:
        seeds = [s for t in results.tasks.values() for s in t.seeds]
        rows.append(("all tasks, pooled" + of_model, intervals_row(results.pooled, None, seeds, spec)))
    if spec.paper:
        rows.extend((label, paper_row(p)) for label, p in PAPER.items())
    return rows


def difference_rows(results: R.DaiResults) -> list[tuple[str, dict[str, str]]]:
    """Paired differences per task and pooled (a cell excluding 0 is a distinguishable effect)."""
    def cells(found: dict) -> dict[str, str]:  # accuracies (percent) to 1 decimal, like the table
        return {key: interval_cell(found.get(key), 1 if "%" in title else 3)
                for title, key in DIFFERENCE_COLUMNS}

    rows = [(name, cells(t.differences)) for name, t in results.tasks.items()]
    if len(results.tasks) > 1:
        rows.append(("all tasks, pooled", cells(results.pooled_differences)))
    return rows


def caption(results: R.DaiResults) -> str:
    """What the cells are: seeds, examples, interval, attribution subset."""
    cfg = results.config
    n_test = sorted({t.n_test for t in results.tasks.values()})
    n_attr = sorted({t.n_attribution for t in results.tasks.values() if t.n_attribution})
    text = (f"{cfg.get('seeds', 1)} seed(s) × {'/'.join(map(str, n_test))} test examples per task; "
            "mean [95 % interval] (bootstrap over seeds, then test examples); "
            f"⚠ n=K: a ratio resting on only K < {N.MIN_DENOMINATOR} examples")
    if n_attr:
        text += f"; head attribution on the first {'/'.join(map(str, n_attr))} test examples"
    dtype = cfg.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        text += (f"; forward passes in {dtype}: its rounding of the hidden states biases SimAOU "
                 "and SimAM_Δ (differences of them) against float32")
    skipped = undefined_layers(results, N.SIMAM_DELTA)
    if skipped:
        text += (f"; SimAM_Δ leaves out layer {', '.join(map(str, skipped))}: ICL or FT leaves "
                 "the last token's scores over the query unchanged there up to rounding (e.g. "
                 "layer 0 of a rotary model), and a cosine of rounding errors is noise")
    n_untrained = sorted({t.n_untrained for t in results.tasks.values() if t.untrained})
    if n_untrained:
        text += (f"; untrained model on the first {'/'.join(map(str, n_untrained))} test examples "
                 "(trained − untrained: paired on those)")
    return text


def undefined_layers(results: R.DaiResults, name: str) -> list[int]:
    """Layers where ``name`` is undefined (``nan``) in every replicate of every task."""
    common: set[int] | None = None
    for task in results.tasks.values():
        for seed in task.seeds:
            summary = seed.metrics.get(name)
            if summary is None or summary.per_layer is None:
                continue
            empty = {i for i, v in enumerate(summary.per_layer) if v is None or not math.isfinite(v)}
            common = empty if common is None else common & empty
    return sorted(common or ())


def print_dai_table(results: R.DaiResults, console: Console | None = None) -> None:
    """The tables (the model named in their titles), the paired differences and the caption,
    never cutting a cell."""
    console = console or Console()
    model = f" — {results.model}"
    for title, columns, rows, first in (
            *((spec.title + model, spec.headers, dai_rows(results, spec, short=True), "task")
              for spec in TABLES),
            ("Paired differences" + model, DIFFERENCE_COLUMNS, difference_rows(results), "task")):
        cells = [(escape(label), *(escape(row[k]) for _, k in columns))  # printed literally
                 for label, row in rows]
        print_table(console, (first, *(c for c, _ in columns)), cells, title=title)
    console.print(escape(caption(results)))


def _markdown(columns: list[tuple[str, str]], rows, first: str) -> list[str]:
    lines = [f"| {first} | " + " | ".join(c for c, _ in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {label} | " + " | ".join(row[k] for _, k in columns) + " |" for label, row in rows]
    return lines


def dai_markdown(results: R.DaiResults, tables: tuple[TableSpec, ...] = TABLES) -> str:
    """The tables in markdown, each under its title in bold, then the paired differences."""
    parts = ["\n".join([f"**{spec.title}**", "",
                         *_markdown(spec.headers, dai_rows(results, spec), "task / model")])
             for spec in tables]
    parts.append("\n".join(_markdown(DIFFERENCE_COLUMNS, difference_rows(results), "paired difference")))
    return "\n\n".join([*parts, caption(results)])
