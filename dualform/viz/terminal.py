"""Terminal tables that never cut a number or a name: the walkthrough's and the bench's rows.

Imports only rich, so the command line prints tables without importing torch
(:func:`print_table` is what every command prints through).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

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


def bench_rows(result: dict) -> list[tuple[str, str]]:
    """``dualform bench``'s result (:func:`dualform.infra.bench.run_bench`) as (measurement,
    value) rows: each ratio with the two timings it comes from."""
    rows = [("second load of the model", f"{result['second_load_s']:.2f} s")]
    c, d, f = result["capture"], result["dual_form"], result["finetune"]
    rows += [
        (f"capture q,k,v,z,attn_out,scores ({c['tokens']} tok) / bare forward",
         f"{c['capture_ratio']:.2f}x ({c['capture_s']:.2f} s vs {c['bare_forward_s']:.2f} s)"),
        ("full run_with_cache / bare forward", f"{c['run_with_cache_ratio']:.2f}x"),
        ("captured activations", f"{c['captured_MiB']:.1f} MiB"),
        (f"dual_form ({d['tokens']} tok) / bare forward",
         f"{d['dual_form_ratio']:.2f}x ({d['dual_form_s']:.2f} s vs {d['bare_forward_s']:.2f} s)"),
        ("dual_form result size", f"{d['result_MiB']:.1f} MiB"),
        (f"finetune_kv step ({f['tokens']} tok) / fwd+bwd on K,V",
         f"{f['finetune_step_ratio']:.2f}x ({f['finetune_step_s']:.3f} s vs {f['forward_backward_s']:.3f} s)"),
    ]
    for k, p in result["prefix_reuse"].items():
        rows.append((f"ICL per query, {k} shots ({p['prompt_tokens']} tok): naive / prefix reuse",
                     f"{p['speedup']:.1f}x ({p['naive_per_query_s']:.3f} s vs {p['reuse_per_query_s']:.3f} s)"))
    sp = result.get("shared_prefix", {})
    if sp.get("available"):
        rows.append((f"ICL records, {sp['queries']} queries on a {sp['prompt_tokens']}-token "
                     "prompt: copied / shared prefix cache",
                     f"{sp['speedup']:.2f}x ({sp['copied_s']:.2f} s vs {sp['shared_s']:.2f} s)"))
    g = result["seed_grid"]
    rows.append((f"finetuning {g['seeds']} seeds × {g['rates']} rates: per-seed grids / one batch",
                 f"{g['speedup']:.2f}x ({g['per_seed_grids_s']:.1f} s vs {g['one_batch_s']:.1f} s)"))
    m = result.get("cpu_matmul", {})
    if m.get("available"):
        rows.append(("frozen float32 linear [128,1024]x[1024,1024]: default (MKL) / oneDNN",
                     f"{m['linear_speedup']:.2f}x"))
        for label, key in (("model forward, 12 × 16 tok", "forward"),
                           ("finetuning grid, 12 rows × 4 steps", "grid")):
            t = m[key]
            rows.append((f"{label}: default linears / oneDNN",
                         f"{t['speedup']:.2f}x ({t['default_s']:.2f} s vs {t['onednn_s']:.2f} s)"))
    if "pythia_shape" in result:
        pc, pd = result["pythia_shape"]["capture"], result["pythia_shape"]["dual_form"]
        rows.append((f"Pythia-160M shape: capture q,k,v,z,scores ({pc['tokens']} tok) / bare forward",
                     f"{pc['capture_ratio']:.2f}x ({pc['capture_s']:.2f} s vs {pc['bare_forward_s']:.2f} s)"))
        rows.append((f"Pythia-160M shape: dual_form ({pd['tokens']} tok) / bare forward",
                     f"{pd['dual_form_ratio']:.2f}x ({pd['dual_form_s']:.2f} s vs {pd['bare_forward_s']:.2f} s)"))
    if "end_to_end" in result:
        e = result["end_to_end"]
        for key in ("default", "many_seeds"):
            if key in e:
                d = e[key]
                rows.append((f"reproduce dai, {d['seeds']} seeds",
                             f"{d['total_s']:.0f} s wall, {d['cpu_s']:.0f} CPU-s, "
                             f"peak RSS so far {d['peak_rss_MiB']:.0f} MiB"))
        for label, key in (("seeds on their own / shared", "seed_sharing"),
                           ("reuse+batching off / on", "reuse"),
                           ("default linears / oneDNN", "cpu_matmul")):
            if key not in e:
                continue
            p = e[key]
            rows.append((f"one task: {label}", f"{p['speedup']:.2f}x ({p['naive']['total_s']:.0f} s "
                         f"vs {p['shared']['total_s']:.0f} s)"))
    rows.append(("peak RSS", f"{result['peak_rss_MiB']:.0f} MiB"))
    return rows
