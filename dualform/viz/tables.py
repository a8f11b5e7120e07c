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
from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dualform.experiments.dai import results as R
from dualform.experiments.stats import Interval

#: Dai et al. (2023), averages over their six tasks (reference §1), for comparison.
PAPER = {
    "GPT 1.3B (paper)": {"rec2ftp": 85.56, "simaou": 0.186, "simaou_random": 0.002,
                         "simam_before": 0.338, "simam_after": 0.442, "kendall": 0.193},
    "GPT 2.7B (paper)": {"rec2ftp": 89.39, "simaou": 0.225, "simaou_random": -0.001,
                         "simam_before": 0.355, "simam_after": 0.434, "kendall": 0.214},
}
#: (column title, metric name, digits)
METRIC_COLUMNS = [
    ("acc ZSL %", R.ACCURACY["zsl"], 1), ("acc FT %", R.ACCURACY["ft"], 1),
    ("acc ICL %", R.ACCURACY["icl"], 1), ("Rec2FTP %", R.REC2FTP, 1),
    ("SimAOU", R.SIMAOU, 3), ("SimAOU unnorm.", R.SIMAOU_UNNORM, 3),
    ("SimAOU rand.", R.SIMAOU_RANDOM, 3), ("SimAM before", R.SIMAM_BEFORE, 3),
    ("SimAM after", R.SIMAM_AFTER, 3), ("SimAM_Δ", R.SIMAM_DELTA, 3),
    ("Kendall", R.KENDALL, 3),
]
COLUMNS = [(title, name) for title, name, _ in METRIC_COLUMNS] + [("head attr. ρ", "attribution")]
TRAINING_COLUMNS = [
    ("Kendall token", R.KENDALL, 3), ("rand.", R.KENDALL_RANDOM, 3),
    ("Kendall example", R.KENDALL_EXAMPLE, 3), ("rand.", R.KENDALL_EXAMPLE_RANDOM, 3),
    ("top-100 recall token", R.TOPK_TOKEN, 3), ("rand.", R.TOPK_TOKEN_RANDOM, 3),
    ("top-5 recall example", R.TOPK_EXAMPLE, 3), ("rand.", R.TOPK_EXAMPLE_RANDOM, 3),
]
F2T_COLUMNS = [("n_f2t", "n_f2t", 0)] + [
    (title, R.f2t(name), 3) for title, name in (
        ("SimAOU", R.SIMAOU), ("SimAOU unnorm.", R.SIMAOU_UNNORM), ("SimAOU rand.", R.SIMAOU_RANDOM),
        ("SimAM before", R.SIMAM_BEFORE), ("SimAM after", R.SIMAM_AFTER), ("SimAM_Δ", R.SIMAM_DELTA))]
NOT_APPLICABLE = "n/a"
DIVERGED = "diverged"
#: Paired differences shown in the second table: (column title, difference key).
DIFFERENCE_COLUMNS = [
    ("SimAOU − random", f"{R.SIMAOU} − {R.SIMAOU_RANDOM}"),
    ("Kendall − random", f"{R.KENDALL} − {R.KENDALL_RANDOM}"),
    *((f"{title} − untrained", f"trained − untrained: {name}") for title, name in (
        ("acc ICL %", R.ACCURACY["icl"]), ("SimAOU", R.SIMAOU), ("SimAOU unnorm.", R.SIMAOU_UNNORM),
        ("SimAM after", R.SIMAM_AFTER), ("SimAM_Δ", R.SIMAM_DELTA), ("Kendall", R.KENDALL))),
]


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def interval_cell(interval: Interval | None, digits: int = 3, *, ratio: bool = False) -> str:
    """``mean [low, high]``; ``ratio`` adds ``⚠ n=K`` (K examples) below the minimum denominator."""
    if interval is None or math.isnan(interval.mean):
        return "–"
    cell = f"{interval.mean:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    if ratio and interval.n < R.MIN_DENOMINATOR:
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
        value = interval_cell(intervals.get(name), digits, ratio=name in (R.REC2FTP, *R.F2T_NAMES))
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
    row.update({R.REC2FTP: _fmt(p["rec2ftp"], 1), R.SIMAOU: _fmt(p["simaou"]),
                R.SIMAOU_RANDOM: _fmt(p["simaou_random"]), R.SIMAM_BEFORE: _fmt(p["simam_before"]),
                R.SIMAM_AFTER: _fmt(p["simam_after"]), R.KENDALL: _fmt(p["kendall"])})
    return row


def dai_rows(results: R.DaiResults, spec: TableSpec = MAIN) -> list[tuple[str, dict[str, str]]]:
    """Rows per task (trained, untrained), pooled over tasks, then (main table) the paper's."""
    model = results.model
    rows = []
    for name, t in results.tasks.items():
        rows.append((f"{name} ({model})", intervals_row(t.intervals, t.attribution, t.seeds, spec)))
        if t.untrained:
            rows.append((f"{name} (untrained {model})",
                         intervals_row(t.untrained_intervals, None, t.untrained, spec)))
    if len(results.tasks) > 1:
        seeds = [s for t in results.tasks.values() for s in t.seeds]
        rows.append((f"all tasks, pooled ({model})", intervals_row(results.pooled, None, seeds, spec)))
    if spec.paper:
        rows.extend((label, paper_row(p)) for label, p in PAPER.items())
    return rows


def difference_rows(results: R.DaiResults) -> list[tuple[str, dict[str, str]]]:
    """Paired differences per task and pooled (a cell excluding 0 is a distinguishable effect)."""
    rows = [(name, {key: interval_cell(t.differences.get(key)) for _, key in DIFFERENCE_COLUMNS})
            for name, t in results.tasks.items()]
    if len(results.tasks) > 1:
        rows.append(("all tasks, pooled", {key: interval_cell(results.pooled_differences.get(key))
                                           for _, key in DIFFERENCE_COLUMNS}))
    return rows


def caption(results: R.DaiResults) -> str:
    """What the cells are: seeds, examples, interval, attribution subset."""
    cfg = results.config
    n_test = sorted({t.n_test for t in results.tasks.values()})
    n_attr = sorted({t.n_attribution for t in results.tasks.values() if t.n_attribution})
    text = (f"{cfg.get('seeds', 1)} seed(s) × {'/'.join(map(str, n_test))} test examples per task; "
            "mean [95 % interval] (bootstrap over seeds, then test examples); "
            f"⚠ n=K: a ratio resting on only K fewer than {R.MIN_DENOMINATOR} examples")
    if n_attr:
        text += f"; head attribution on the first {'/'.join(map(str, n_attr))} test examples"
    return text


def print_dai_table(results: R.DaiResults, console: Console | None = None) -> None:
    """The tables, the paired differences and the caption, never cutting a cell."""
    console = console or Console()
    for title, columns, rows, first in (
            *((spec.title, spec.headers, dai_rows(results, spec), "task / model") for spec in TABLES),
            ("Paired differences", DIFFERENCE_COLUMNS, difference_rows(results), "task")):
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


# --- terminal rendering that never cuts a cell ---------------------------------------------

#: rich's default box: one border per column plus the closing one, one space of padding each side.
CELL_OVERHEAD = 3


def column_groups(widths: Sequence[int], width: int, keep: int = 1) -> list[list[int]]:
    """Split column indices into groups that each fit ``width`` characters; every group starts
    with the first ``keep`` columns (the row labels). A column too wide on its own gets a
    group of its own (its cells then fold onto several lines, still whole)."""
    fixed = sum(w + CELL_OVERHEAD for w in widths[:keep]) + 1
    groups: list[list[int]] = []
    used = fixed
    for i in range(keep, len(widths)):
        need = widths[i] + CELL_OVERHEAD
        if groups and used + need <= width:
            groups[-1].append(i)
            used += need
        else:
            groups.append([*range(keep), i])
            used = fixed + need
    return groups or [list(range(len(widths)))]


def print_table(console: Console | None, header: Sequence[str], rows: Sequence[Sequence[str]],
                *, title: str | None = None, keep: int = 1, caption: str | None = None) -> None:
    """Print a table without truncating any number or name, at any console width.

    Columns that do not fit ``console.width`` (80 when the output is a pipe or a file, unless
    ``COLUMNS`` says otherwise) continue in further tables that repeat the first ``keep``
    columns; cells fold rather than end in an ellipsis.
    """
    console = console or Console()
    widths = [max(cell_len(line) for cell in (h, *(r[i] for r in rows)) for line in str(cell).splitlines() or [""])
              for i, h in enumerate(header)]
    groups = column_groups(widths, console.width, keep)
    for n, group in enumerate(groups):
        part = f" ({n + 1}/{len(groups)})" if len(groups) > 1 else ""
        table = Table(title=f"{title}{part}" if title else None,
                      caption=caption if n == len(groups) - 1 else None)
        for i in group:
            table.add_column(header[i], overflow="fold", no_wrap=False)
        for row in rows:
            table.add_row(*(str(row[i]) for i in group))
        console.print(table)


# --- the walkthrough -----------------------------------------------------------------------

WALKTHROUGH_LEGEND = (
    ("err (all)",
     "under relaxed linear attention (no softmax, no 1/√d), max |z − (W_ZSL + ΔW_ICL) q| / max |z| "
     "over the layer's heads: the dual form's identity error, ~1e-16 in float64"),
    ("err (demo)",
     "the same identity error with the keys restricted to the demonstrations: z_demo vs ΔW_ICL q"),
    ("‖ΔW_ICL‖", "Frobenius norm of ΔW_ICL = Σ_demo v_i ⊗ k_i (what the demonstrations add), "
     "mean over heads, under the model's real attention"),
    ("‖W_ZSL‖", "the same for W_ZSL = Σ_query v_j ⊗ k_j (what the query's own tokens give)"),
    ("cos(ΔW_ICL q, Δz_FT)",
     "per head, cosine between the ICL update ΔW_ICL q and Δz_FT = z_FT − z_ZSL, the change of "
     "the attention output (hook_z) at the query's last token that K/V finetuning on the same "
     "demonstrations causes; mean over heads. Positive: ICL moves the output where finetuning "
     "does; ≈ 0: unrelated"),
)


def print_walkthrough(result: dict, console: Console | None = None) -> None:
    """The walkthrough's per-layer table (see :mod:`dualform.experiments.walkthrough`) and a
    legend that says what every column means."""
    console = console or Console()
    console.print(f"[bold]{result['model']}[/], task {result['task']}, {result['shots']} "
                  f"demonstrations (seed {result['seed']}): {result['n_tokens']} ICL tokens, "
                  f"{result['n_demo_tokens']} of them demonstrations; query: {result['query']!r} (gold label {result['gold']!r})")

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    rows = [
        (str(layer), f"{result['identity_error_full'][i]:.1e}", f"{result['identity_error_demo'][i]:.1e}",
         f"{mean(result['norm_delta_w_icl'][i]):.3g}", f"{mean(result['norm_w_zsl'][i]):.3g}",
         f"{mean(result['cos_icl_update_vs_ft'][i]):+.3f}")
        for i, layer in enumerate(result["layers"])
    ]
    print_table(console, ("layer", *(name for name, _ in WALKTHROUGH_LEGEND)), rows,
                title="the dual form, layer by layer (float64)")
    for name, text in WALKTHROUGH_LEGEND:
        console.print(f"[bold]{name}[/]: {text}.")
    losses = ", ".join(f"{x:.3f}" for x in result["ft_losses"])
    console.print(f"finetuning (lr {result['lr']}, one SGD step per demonstration) losses: {losses}")
