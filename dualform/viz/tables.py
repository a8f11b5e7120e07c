"""Paper-style tables (Dai et al. Tables 2–5 layout) from a ``results.json``, for terminal and README.

Three tables (:data:`TABLES`), each a title, its columns and a row function of one task's
results: the paper's metrics over all test examples (:data:`COLUMNS`, with the paper's numbers),
the attention to the training examples (Kendall, top-k recall, random baselines), and the
similarity metrics in the ``f2t`` mode. Every cell goes through :func:`cell`; a metric that
does not apply reads ``n/a``, one missing from an older results file ``–``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: Dai et al. (2023), averages over their six tasks (reference §1), for comparison.
PAPER = {
    "GPT 1.3B (paper)": {"rec2ftp": 85.56, "simaou": 0.186, "simaou_random": 0.002,
                         "simam_before": 0.338, "simam_after": 0.442, "kendall": 0.193},
    "GPT 2.7B (paper)": {"rec2ftp": 89.39, "simaou": 0.225, "simaou_random": -0.001,
                         "simam_before": 0.355, "simam_after": 0.434, "kendall": 0.214},
}
COLUMNS = [
    ("acc ZSL/FT/ICL", "acc"), ("Rec2FTP %", "rec2ftp"), ("SimAOU", "simaou"),
    ("SimAOU unnorm.", "simaou_unnorm"), ("SimAOU rand.", "simaou_random"),
    ("SimAM before→after", "simam"), ("SimAM_Δ", "simam_delta"), ("Kendall", "kendall"),
    ("head attr. ρ", "attribution"),
]
TRAINING_COLUMNS = [
    ("Kendall token", "kendall"), ("rand.", "kendall_random"),
    ("Kendall example", "kendall_example"), ("rand.", "kendall_example_random"),
    ("top-100 recall token", "recall_token"), ("rand.", "recall_token_random"),
    ("top-5 recall example", "recall_example"), ("rand.", "recall_example_random"),
]
F2T_COLUMNS = [
    ("n_f2t", "n"), ("SimAOU", "simaou"), ("SimAOU unnorm.", "simaou_unnorm"),
    ("SimAOU rand.", "simaou_random"), ("SimAM before→after", "simam"), ("SimAM_Δ", "simam_delta"),
]
NOT_APPLICABLE = "n/a"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def metric(t: dict | None, *path: str):
    """The value at ``path`` in a task's results: a number, ``None`` (missing) or
    :data:`NOT_APPLICABLE` (a block on the way says ``not_applicable``)."""
    node = t
    for key in path:
        if not isinstance(node, dict):
            return None
        if "not_applicable" in node:
            return NOT_APPLICABLE
        node = node.get(key)
    return node


def cell(value, digits: int = 3) -> str:
    """One table cell (the one place numbers are formatted)."""
    return value if isinstance(value, str) else _fmt(value, digits)


def _mean(t: dict, *path: str) -> str:
    return cell(metric(t, *path, "mean"))


DIVERGED = "diverged"


def task_row(t: dict) -> dict[str, str]:
    """One row of the main table from one task's results (also for the untrained baseline);
    when finetuning diverged, every column that involves FT says so instead of a number."""
    if t.get("ft_diverged"):
        return diverged_row(t)
    acc = t["accuracy"]
    return {
        "acc": f"{acc['zsl']:.1f}/{acc['ft']:.1f}/{acc['icl']:.1f}",
        "rec2ftp": NOT_APPLICABLE if "rec2ftp" in t.get("notes", {}) else cell(t.get("rec2ftp"), 1),
        "attribution": cell(metric(t, "attribution", "spearman")),
        "kendall": _mean(t, "kendall", "value"),
    } | similarity_cells(t)


def similarity_cells(t: dict) -> dict[str, str]:
    """SimAOU and SimAM cells of one mode's block (the task itself, or its ``f2t`` entry)."""
    return {
        "simaou": _mean(t, "simaou", "normalized"),
        "simaou_unnorm": _mean(t, "simaou", "unnormalized"),
        "simaou_random": _mean(t, "simaou", "random"),
        "simam": f"{_mean(t, 'simam', 'before')}→{_mean(t, 'simam', 'after')}",
        "simam_delta": _mean(t, "simam", "delta"),
    }


def training_row(t: dict) -> dict[str, str]:
    """Kendall and top-k recall (token / example level) with their random baselines."""
    row = {"kendall": _mean(t, "kendall", "value"), "kendall_random": _mean(t, "kendall", "random"),
           "kendall_example": _mean(t, "kendall", "example"),
           "kendall_example_random": _mean(t, "kendall", "example_random")}
    for level in ("token", "example"):
        row[f"recall_{level}"] = _mean(t, "topk_recall", level, "value")
        row[f"recall_{level}_random"] = _mean(t, "topk_recall", level, "random")
    return row


def f2t_row(t: dict) -> dict[str, str]:
    """The similarity metrics over the examples both updates fix (ZSL ✗, FT ✓, ICL ✓)."""
    block = t.get("f2t")
    n = t.get("n_f2t")
    return {"n": "–" if n is None else str(n)} | similarity_cells(block if block is not None else {})


def diverged_row(t: dict) -> dict[str, str]:
    """The row of a task whose finetuning diverged: ZSL/ICL numbers, ``diverged`` for FT."""
    acc, d = t["accuracy"], DIVERGED
    before = (t.get("simam", {}).get("before") or {}).get("mean")
    return {
        "acc": f"{acc['zsl']:.1f}/{d}/{acc['icl']:.1f}", "rec2ftp": d, "simaou": d,
        "simaou_unnorm": d, "simaou_random": _fmt((t.get("simaou", {}).get("random") or {}).get("mean")),
        "simam": f"{_fmt(before)}→{d}", "simam_delta": d, "kendall": d, "attribution": d,
    }


def paper_row(p: dict) -> dict[str, str]:
    return {
        "acc": "see reference", "rec2ftp": _fmt(p["rec2ftp"], 1), "simaou": _fmt(p["simaou"]),
        "simaou_unnorm": "–", "simaou_random": _fmt(p["simaou_random"]),
        "simam": f"{_fmt(p['simam_before'])}→{_fmt(p['simam_after'])}", "simam_delta": "–",
        "kendall": _fmt(p["kendall"]), "attribution": "–",
    }


@dataclass(frozen=True)
class TableSpec:
    """A table: its title, ``(header, key)`` columns, the row of one task's results and, for
    the main table, the paper's rows."""

    title: str
    columns: list[tuple[str, str]]
    row: Callable[[dict], dict[str, str]]
    paper: Callable[[dict], dict[str, str]] | None = None


MAIN = TableSpec("ICL vs finetuning (Dai et al. layout; all test examples)", COLUMNS, task_row, paper_row)
TABLES = (
    MAIN,
    TableSpec("Attention to the training examples (Kendall τ, top-k recall; random baselines)",
              TRAINING_COLUMNS, training_row),
    TableSpec("f2t mode: examples both fix (ZSL wrong, FT right, ICL right)", F2T_COLUMNS, f2t_row),
)


def dai_rows(results: dict, spec: TableSpec = MAIN) -> list[tuple[str, dict[str, str]]]:
    model = results["config"]["model"]
    rows = []
    for name, t in results["tasks"].items():
        rows.append((f"{name} ({model})", _row(spec, t)))
        if "untrained" in t:
            rows.append((f"{name} (untrained {model})", _row(spec, t["untrained"])))
    if spec.paper is not None:
        rows.extend((label, spec.paper(p)) for label, p in PAPER.items())
    return rows


def _row(spec: TableSpec, t: dict) -> dict[str, str]:
    """``spec``'s row of one task; where finetuning diverged, the cells it left empty (every
    number that involves FT) say ``diverged``."""
    row = spec.row(t)
    if t.get("ft_diverged"):
        row = {k: DIVERGED if v == "–" else v for k, v in row.items()}
    return row


def print_dai_table(results: dict, console: Console | None = None) -> None:
    for spec in TABLES:
        rows = [(escape(label), *(escape(row[k]) for _, k in spec.columns))  # printed literally
                for label, row in dai_rows(results, spec)]
        print_table(console, ("task / model", *(c for c, _ in spec.columns)), rows, title=spec.title)


def dai_markdown(results: dict, tables: tuple[TableSpec, ...] = TABLES) -> str:
    """The tables in markdown, each under its title in bold."""
    parts = []
    for spec in tables:
        lines = [f"**{spec.title}**", "",
                 "| task / model | " + " | ".join(c for c, _ in spec.columns) + " |",
                 "|" + "---|" * (len(spec.columns) + 1)]
        lines += [f"| {label} | " + " | ".join(row[k] for _, k in spec.columns) + " |"
                  for label, row in dai_rows(results, spec)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


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
