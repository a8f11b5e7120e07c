"""Paper-style tables (Dai et al. Tables 2–5 layout) from a ``results.json``, for terminal and README."""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
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


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def task_row(t: dict) -> dict[str, str]:
    """One table row from one task's results (also used for the untrained baseline)."""
    acc = t["accuracy"]
    attribution = t.get("attribution", {}).get("spearman")
    return {
        "acc": f"{acc['zsl']:.1f}/{acc['ft']:.1f}/{acc['icl']:.1f}",
        "rec2ftp": _fmt(t.get("rec2ftp"), 1),
        "simaou": _fmt(t["simaou"]["normalized"]["mean"]),
        "simaou_unnorm": _fmt(t["simaou"]["unnormalized"]["mean"]),
        "simaou_random": _fmt(t["simaou"]["random"]["mean"]),
        "simam": f"{_fmt(t['simam']['before']['mean'])}→{_fmt(t['simam']['after']['mean'])}",
        "simam_delta": _fmt(t["simam"]["delta"]["mean"]),
        "kendall": _fmt(t["kendall"]["value"]["mean"]),
        "attribution": _fmt(attribution),
    }


def paper_row(p: dict) -> dict[str, str]:
    return {
        "acc": "see reference", "rec2ftp": _fmt(p["rec2ftp"], 1), "simaou": _fmt(p["simaou"]),
        "simaou_unnorm": "–", "simaou_random": _fmt(p["simaou_random"]),
        "simam": f"{_fmt(p['simam_before'])}→{_fmt(p['simam_after'])}", "simam_delta": "–",
        "kendall": _fmt(p["kendall"]), "attribution": "–",
    }


def dai_rows(results: dict) -> list[tuple[str, dict[str, str]]]:
    model = results["config"]["model"]
    rows = []
    for name, t in results["tasks"].items():
        rows.append((f"{name} ({model})", task_row(t)))
        if "untrained" in t:
            rows.append((f"{name} (untrained {model})", task_row(t["untrained"])))
    rows.extend((label, paper_row(p)) for label, p in PAPER.items())
    return rows


def print_dai_table(results: dict, console: Console | None = None) -> None:
    rows = [(label, *(row[k] for _, k in COLUMNS)) for label, row in dai_rows(results)]
    print_table(console, ("task / model", *(c for c, _ in COLUMNS)), rows,
                title="ICL vs finetuning (Dai et al. layout)")


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


def dai_markdown(results: dict) -> str:
    header = "| task / model | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for label, row in dai_rows(results):
        lines.append(f"| {label} | " + " | ".join(row[k] for _, k in COLUMNS) + " |")
    return "\n".join(lines)


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
