"""``dualform`` command line: info, walkthrough, reproduce, report, bench."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from dualform.errors import check_count, check_learning_rate, is_expected
from dualform.models.load import DEFAULT_MODEL, ModelLoadError


class ErrorReportingGroup(TyperGroup):
    """The one error path of every command: an expected failure (:class:`DualformError`, an
    ``OSError`` such as a full disk) prints one line and exits 2; a bug keeps its traceback."""

    def invoke(self, ctx):  # ctx: the click Context of typer's own (vendored) click
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own exits and usage errors
            raise
        except Exception as err:
            if not is_expected(err):
                raise
            print_error(error_message(err))
            raise typer.Exit(2) from None


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, cls=ErrorReportingGroup)
reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce a paper's experiment.")
app.add_typer(reproduce_app, name="reproduce")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def error_message(err: BaseException) -> str:
    """The text of an expected failure; a bare ``OSError`` gets its file and a hint."""
    message = str(err)
    if isinstance(err, OSError) and type(err) in (OSError, PermissionError, FileNotFoundError,
                                                  IsADirectoryError, NotADirectoryError):
        where = f"{err.filename}: " if err.filename else ""
        message = f"{where}{err.strerror or err}"
        if err.errno == 28:
            message += " (the disk is full: free some space and rerun; finished parts are kept)"
    return message


def print_error(message: str) -> None:
    """``error: message`` on stderr, the message printed literally (no rich markup)."""
    err_console.print(f"[red]error:[/] {escape(message)}")


def check_output_dir(out: Path) -> None:
    """Create ``out`` and check it is writable before any model is loaded or anything runs."""
    from dualform.infra.results_dir import prepare_output_dir

    prepare_output_dir(out)


def _fail(message: str) -> None:
    print_error(message)
    raise typer.Exit(2)


@app.command()
def info(model: str = typer.Argument(DEFAULT_MODEL, help="Model name (see README).")) -> None:
    """Print the model card and the hook names of one layer."""
    from dualform.models.features import attention_features
    from dualform.models.load import load_model
    from dualform.probes import available_short_names, head_counts

    try:
        bridge = load_model(model)
    except ModelLoadError as err:
        _fail(str(err))
    cfg = bridge.cfg
    n_heads, n_kv = head_counts(bridge)
    card = Table("property", "value", title=f"model card: {model}")
    for key, value in [
        ("architecture", type(bridge.original_model).__name__),
        ("layers", cfg.n_layers), ("heads", n_heads), ("KV heads", n_kv),
        ("d_model", cfg.d_model), ("d_head", cfg.d_head), ("context length", cfg.n_ctx),
        ("positional embedding", cfg.positional_embedding_type),
        ("attention features", attention_features(bridge).summary()),
        ("parameters", f"{sum(p.numel() for p in bridge.parameters()):,}"),
    ]:
        card.add_row(key, str(value))
    console.print(card)
    console.print("short hook names: " + ", ".join(available_short_names(bridge)))
    hooks = sorted(h for h in bridge.hook_dict if h.startswith("blocks.0."))
    console.print(f"hooks of layer 0 (same for blocks.0..{cfg.n_layers - 1}):")
    for name in hooks:
        console.print(f"  {name}")
    others = sorted(h for h in bridge.hook_dict if not h.startswith("blocks."))
    console.print("other hooks: " + ", ".join(others))


@app.command()
def walkthrough(
    model: str = typer.Option(DEFAULT_MODEL, help="Model name."),
    lr: float = typer.Option(0.01, help="Learning rate of the K/V finetuning step."),
    out: Path | None = typer.Option(None, help="Write the numbers as JSON here."),
) -> None:
    """The dual form on one prompt: identities, norms, ICL update vs finetuning, per layer."""
    from dualform.experiments.walkthrough import run_walkthrough

    check_learning_rate(lr, "--lr")
    if out is not None:
        check_output_dir(out.parent)
    try:
        result = run_walkthrough(model, lr=lr, console=console)
    except ModelLoadError as err:
        _fail(str(err))
    if out is not None:
        from dualform.infra.io import write_json_atomic

        write_json_atomic(out, result)
        console.print(f"wrote {escape(str(out))}")


def _default_tasks() -> tuple[str, ...]:
    from dualform.experiments.dai.protocol import DEFAULT_TASKS

    return DEFAULT_TASKS


# Options shared by `reproduce dai` and `sweep` (one definition, same meaning in both).
TASKS = typer.Option(",".join(_default_tasks()), help="Comma-separated task names.")
SHOTS = typer.Option(32, help="Demonstrations per prompt.")
N_TEST = typer.Option(24, help="Test examples per task.")
N_VALIDATION = typer.Option(12, help="Validation examples per task (LR/seed choice).")
DEMO_SEEDS = typer.Option("1,2", help="Demonstration seeds to choose from.")
FULL_GRID = typer.Option(False, help="Dai's full LR grid {1..9}x{0.1..0.0001}.")
LR_GRID = typer.Option("", help="Comma-separated learning rates (default: DaiConfig's).")
DTYPE = typer.Option("float32", help="float32, bfloat16 or float16 (float64 for identities).")
OVERWRITE = typer.Option(False, help="Results of other settings in --out: rename them aside (never deleted) and start afresh.")


@reproduce_app.command("dai")
def reproduce_dai(
    model: str = typer.Option(DEFAULT_MODEL, help="Model name."),
    tasks: str = TASKS,
    shots: int = SHOTS,
    out: Path = typer.Option(Path("results/dai"), help="Output directory (resumable)."),
    n_test: int = N_TEST,
    n_validation: int = N_VALIDATION,
    demo_seeds: str = DEMO_SEEDS,
    full_grid: bool = FULL_GRID,
    lr_grid: str = LR_GRID,
    layer_causal: bool = typer.Option(False, help="Layer-causal finetuning (Deutch et al.)."),
    untrained: bool = typer.Option(True, help="Also run the untrained-model baseline."),
    attribution: bool = typer.Option(True, help="Head-by-head attribution maps."),
    batch_size: int = typer.Option(0, help="Queries per batch (0: from free memory; 1: no batching of queries, attribution or the LR grid)."),
    reuse_prefix: bool = typer.Option(True, help="Run the demonstrations once per task (KV cache)."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
    dtype: str = DTYPE,
    device_map: str = typer.Option("", help="'auto': spread a large HF model over the GPUs (accelerate)."),
    report: bool = typer.Option(True, help="Write report.html at the end."),
    scaled_queries: bool = typer.Option(
        True, "--scaled-queries/--unscaled-queries",
        help="Kendall's FT map q·q/d_head as the authors' recorder scales it (default), or raw q·q."),
    keep_separator: bool = typer.Option(
        False, help="Train on and rank each demonstration's separator too (the authors leave it out)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Dai et al. 2023: ZSL / ICL / FT, every metric per layer and head, resumable."""
    from dualform.experiments.dai.protocol import run_dai
    from dualform.viz.tables import print_dai_table

    config = _dai_config(model, tasks, shots, n_test, n_validation, demo_seeds, full_grid, lr_grid,
                         layer_causal=layer_causal, untrained_baseline=untrained,
                         attribution=attribution, batch_size=batch_size or None,
                         reuse_prefix=reuse_prefix, device=device, dtype=dtype,
                         device_map=device_map or None, scaled_queries=scaled_queries,
                         keep_separator=keep_separator)
    try:
        results = run_dai(out, config, overwrite=overwrite)
    except (ModelLoadError, ValueError) as err:
        _fail(str(err))
    print_dai_table(results, console)
    console.print(f"wrote {escape(str(out / 'results.json'))}")
    if report:
        _write_report(out)


def _dai_config(model: str, tasks: str, shots: int, n_test: int, n_validation: int,
                demo_seeds: str, full_grid: bool, lr_grid: str, **options):
    from dualform.experiments.dai.protocol import DaiConfig
    from dualform.models.load import resolve_dtype

    try:
        resolve_dtype(options.get("dtype"))
        config = DaiConfig(
            model=model, tasks=tuple(t for t in tasks.split(",") if t), shots=shots,
            n_validation=n_validation, n_test=n_test,
            demo_seeds=tuple(int(s) for s in demo_seeds.split(",")), **options,
        )
        if lr_grid:
            config = dataclasses.replace(config, lr_grid=tuple(float(x) for x in lr_grid.split(",")))
    except ValueError as err:
        _fail(str(err))
    return config.with_full_grid() if full_grid else config


@app.command()
def sweep(
    models: str = typer.Option(DEFAULT_MODEL, help="Comma-separated model names."),
    tasks: str = TASKS,
    shots: int = SHOTS,
    out: Path = typer.Option(Path("results/sweep"), help="Output directory (one file per job)."),
    n_test: int = N_TEST,
    n_validation: int = N_VALIDATION,
    demo_seeds: str = DEMO_SEEDS,
    full_grid: bool = FULL_GRID,
    lr_grid: str = LR_GRID,
    executor: str = typer.Option("local", help="local (in this process) or ray."),
    address: str = typer.Option("", help="Ray cluster address ('auto', 'ray://head:10001'); empty: local Ray."),
    cpus_per_job: float = typer.Option(1, help="Ray: CPUs per job."),
    gpus_per_job: float = typer.Option(0, help="Ray: GPUs per job."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto (per job)."),
    dtype: str = DTYPE,
    device_map: str = typer.Option("", help="'auto': spread each large HF model over its job's GPUs."),
    overwrite: bool = OVERWRITE,
) -> None:
    """The LR grid × demo seeds × tasks × models sweep of reproduce dai, on an executor.

    Each job writes OUT/jobs/<job>.json; a rerun skips finished jobs; OUT/<model>/results.json
    has the layout of reproduce dai (dualform report OUT/<model> works)."""
    from dualform.experiments.dai.sweep import model_slug, run_sweep
    from dualform.infra.executors import get_executor
    from dualform.viz.tables import print_dai_table

    config = _dai_config(models.split(",")[0], tasks, shots, n_test, n_validation, demo_seeds,
                         full_grid, lr_grid, device=device, dtype=dtype,
                         device_map=device_map or None)
    kwargs = {"cpus_per_job": cpus_per_job, "gpus_per_job": gpus_per_job} if executor == "ray" else {}
    try:
        runner = get_executor(executor, address=address or None, **kwargs)
        results = run_sweep(out, config, [m for m in models.split(",") if m], runner,
                            overwrite=overwrite)
    except (ModelLoadError, ValueError, ImportError) as err:
        _fail(str(err))
    for name, result in results.items():
        print_dai_table(result, console)
        for failure in result["failed_jobs"]:
            console.print(f"[red]failed job[/] {escape(failure['job'])}: {escape(failure['error'])} "
                          "(rerun to retry)")
        console.print(f"wrote {escape(str(out / model_slug(name) / 'results.json'))}")


def _write_report(out: Path) -> None:
    from dualform.viz.report import write_report

    console.print(f"wrote {escape(str(write_report(out)))}")


@reproduce_app.command("regression")
def reproduce_regression(
    out: Path = typer.Option(Path("results/regression"), help="Output directory."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
) -> None:
    """von Oswald et al. 2023: LSA ≡ GD construction, trained LSA vs GD / GD++."""
    from dualform.experiments.vonoswald import RegressionConfig, run_regression

    check_output_dir(out)
    result = run_regression(out, config=RegressionConfig(device=device))
    table = Table("steps / layers", "GD (tuned η)", "η", "GD++", "trained LSA", "paper GD",
                  "model cos", "model diff", "preds diff", title="LSA vs GD (½·MSE test loss)")
    for row in result["table"]:
        table.add_row(*(f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "–"))
                        for k in ("steps", "gd", "gd_eta", "gdpp", "lsa", "paper", "model_cos",
                                  "model_diff", "preds_diff")))
    console.print(table)
    for name, check in result["targets"].items():
        console.print(f"  {'✓' if check['met'] else '✗'} {name}: {check['value']:.4g} (target {check['target']})")
    console.print(f"wrote {escape(str(out / 'results.json'))}")


@reproduce_app.command("momentum")
def reproduce_momentum(
    out: Path = typer.Option(Path("results/momentum"), help="Output directory."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    seeds: int = typer.Option(8, min=2, help="Seeds 0..N-1: one vanilla and one momentum twin each."),
    workers: int = typer.Option(2, min=1, help="Training processes in parallel (1 thread each)."),
) -> None:
    """Dai et al. 2023 §5: vanilla vs momentum attention, trained from scratch, paired by seed."""
    from dualform.experiments.momentum import MomentumConfig, run_momentum
    from dualform.viz.momentum import summary_rows

    check_output_dir(out)
    config = MomentumConfig(device=device, seeds=tuple(range(seeds)), workers=workers)
    result = run_momentum(out, config=config)
    header, rows = summary_rows(result)
    table = Table(*header, title="vanilla vs momentum: mean [95 % interval] over seeds")
    for row in rows:
        table.add_row(*(escape(str(c)) for c in row))
    console.print(table)
    console.print(escape(result["verdict"]["text"]))
    console.print(f"wrote {escape(str(out / 'results.json'))}")


@app.command()
def report(results_dir: Path = typer.Argument(Path("results/dai"), help="A results directory.")) -> None:
    """Write RESULTS_DIR/report.html: one self-contained page with tables and every figure."""
    from dualform.viz.report import write_report

    if not (results_dir / "results.json").exists():
        _fail(f"no results.json in {results_dir}; run `dualform reproduce dai --out {results_dir}` first")
    console.print(f"wrote {escape(str(write_report(results_dir)))}")


@app.command()
def bench(
    model: str = typer.Option(DEFAULT_MODEL, help="Model name."),
    repeats: int = typer.Option(5, help="Timed repeats per measurement (median)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    end_to_end: bool = typer.Option(False, help="Also time the default reproduce dai, reuse+batching on vs off (~10 min on 2 CPU cores)."),
    pythia_shape: bool = typer.Option(True, help="Also time capture and dual_form on a random Pythia-160M-shaped model."),
    dtype: str = DTYPE,
) -> None:
    """Performance ratios against baselines measured in the same run."""
    import contextlib
    import sys

    from dualform.infra.bench import run_bench

    check_count(repeats, "--repeats")
    with contextlib.redirect_stdout(sys.stderr):  # libraries print progress; keep stdout clean
        result = run_bench(model, repeats=repeats, device=device, end_to_end=end_to_end, dtype=dtype,
                           pythia_shape=pythia_shape)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("measurement", "value",
                  title=f"dualform bench ({result['device']}, {result['dtype']}, {result['threads']} threads)")
    table.add_row("second load of the model", f"{result['second_load_s']:.2f} s")
    c, d, f = result["capture"], result["dual_form"], result["finetune"]
    table.add_row(f"capture q,k,v,z,attn_out,scores ({c['tokens']} tok) / bare forward",
                  f"{c['capture_ratio']:.2f}x ({c['capture_s']:.2f} s vs {c['bare_forward_s']:.2f} s)")
    table.add_row("full run_with_cache / bare forward", f"{c['run_with_cache_ratio']:.2f}x")
    table.add_row("captured activations", f"{c['captured_MiB']:.1f} MiB")
    table.add_row(f"dual_form ({d['tokens']} tok) / bare forward",
                  f"{d['dual_form_ratio']:.2f}x ({d['dual_form_s']:.2f} s vs {d['bare_forward_s']:.2f} s)")
    table.add_row("dual_form result size", f"{d['result_MiB']:.1f} MiB")
    table.add_row(f"finetune_kv step ({f['tokens']} tok) / fwd+bwd on K,V",
                  f"{f['finetune_step_ratio']:.2f}x ({f['finetune_step_s']:.3f} s vs {f['forward_backward_s']:.3f} s)")
    for k, p in result["prefix_reuse"].items():
        table.add_row(f"ICL per query, {k} shots ({p['prompt_tokens']} tok): naive / prefix reuse",
                      f"{p['speedup']:.1f}x ({p['naive_per_query_s']:.3f} s vs {p['reuse_per_query_s']:.3f} s)")
    if "pythia_shape" in result:
        pc, pd = result["pythia_shape"]["capture"], result["pythia_shape"]["dual_form"]
        table.add_row(f"Pythia-160M shape: capture q,k,v,z,scores ({pc['tokens']} tok) / bare forward",
                      f"{pc['capture_ratio']:.2f}x ({pc['capture_s']:.2f} s vs {pc['bare_forward_s']:.2f} s)")
        table.add_row(f"Pythia-160M shape: dual_form ({pd['tokens']} tok) / bare forward",
                      f"{pd['dual_form_ratio']:.2f}x ({pd['dual_form_s']:.2f} s vs {pd['bare_forward_s']:.2f} s)")
    if "end_to_end" in result:
        e = result["end_to_end"]
        table.add_row("default reproduce dai: reuse+batching off / on",
                      f"{e['speedup']:.1f}x ({e['naive']['total_s']:.0f} s vs {e['reuse']['total_s']:.0f} s)")
        for stage in e["reuse"]["stages_s"]:
            table.add_row(f"  stage {stage}: off / on",
                          f"{e['naive']['stages_s'].get(stage, 0):.0f} s / {e['reuse']['stages_s'][stage]:.0f} s")
    table.add_row("peak RSS", f"{result['peak_rss_MiB']:.0f} MiB")
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # python -m dualform.cli
    main()
