"""Paper-style tables (Dai et al. Tables 2–5 layout) from a ``results.json``, for terminal and README."""

from __future__ import annotations

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


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


DIVERGED = "diverged"


def task_row(t: dict) -> dict[str, str]:
    """One table row from one task's results (also used for the untrained baseline); when
    finetuning diverged, every column that involves FT says so instead of a number."""
    if t.get("ft_diverged"):
        return diverged_row(t)
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
    table = Table("task / model", *(c for c, _ in COLUMNS), title="ICL vs finetuning (Dai et al. layout)")
    for label, row in dai_rows(results):
        table.add_row(escape(label), *(escape(row[k]) for _, k in COLUMNS))  # printed literally
    (console or Console()).print(table)


def dai_markdown(results: dict) -> str:
    header = "| task / model | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for label, row in dai_rows(results):
        lines.append(f"| {label} | " + " | ".join(row[k] for _, k in COLUMNS) + " |")
    return "\n".join(lines)
