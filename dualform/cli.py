"""dualform: in-context learning as implicit finetuning, on TransformerLens.

Commands: info, walkthrough, reproduce (dai, regression, momentum), sweep,
report, bench. Add --help after a command for its options and examples.

Examples:

  dualform info                               # model card, hook names
  dualform walkthrough --task country-region  # the dual form, explained
  dualform reproduce dai --out results/dai    # the main job (~9 min on 2 CPU cores)
  dualform report results/dai                 # rebuild report.html
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from dualform.cli_options import (
    DEFAULT_MODEL,
    DEFAULT_TASKS,
    DEMO_SEEDS,
    DEVICE,
    DEVICE_HELP,
    DTYPE,
    FULL_GRID,
    LR_GRID,
    N_TEST,
    N_VALIDATION,
    OVERWRITE,
    SEEDS,
    SHOTS,
    TASKS,
    ErrorReportingGroup,
    fail,
)
from dualform.errors import check_count, check_learning_rate

# Heavy modules (torch, TransformerLens, plotly, the experiments) are imported inside the
# commands, so `dualform --help` starts in well under a second.

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__,
                  rich_markup_mode="rich", cls=ErrorReportingGroup)
reproduce_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                            help="Reproduce a paper's experiment: dai, regression or momentum.")
app.add_typer(reproduce_app, name="reproduce")
console = Console()


def check_output_dir(out: Path) -> None:
    """Create ``out`` and check it is writable before any model is loaded or anything runs."""
    from dualform.infra.results_dir import prepare_output_dir

    prepare_output_dir(out)


@app.command()
def info(
    model: str = typer.Argument(DEFAULT_MODEL, help="Model name: smollm2-135m (embedded), tiny-llama, tiny-gpt2, a Hugging Face id or directory."),
    refresh: bool = typer.Option(False, "--refresh", help="Load the model and compute the card again instead of reading the kept one."),
) -> None:
    """Print the model card (attention features included) and the hook names of one layer.

    The card is computed once per model (and per version of dualform, torch,
    transformers and TransformerLens) and kept beside the model's cached weights;
    later runs read it without loading the model.

    Examples:

      dualform info
      dualform info tiny-gpt2 --refresh
    """
    from dualform.models.card import model_card
    from dualform.viz.terminal import print_table

    card = model_card(model, refresh=refresh)  # a ModelLoadError: one line, exit 2 (the group)
    print_table(console, ("property", "value"), [tuple(row) for row in card["rows"]],
                title=f"model card: {model}")
    console.print("short hook names: " + ", ".join(card["short_hooks"]))
    console.print(f"hooks of layer 0 (same for blocks.0..{card['n_layers'] - 1}):")
    for name in card["layer_hooks"]:
        console.print(f"  {name}")
    console.print("other hooks: " + ", ".join(card["other_hooks"]))


@app.command()
def walkthrough(
    model: str = typer.Option(DEFAULT_MODEL, help="Model name."),
    task: str = typer.Option(DEFAULT_TASKS[0], help="Task whose demonstrations and first test example make the prompt."),
    shots: int = typer.Option(4, min=1, help="Demonstrations in the prompt."),
    seed: int = typer.Option(1, help="Demonstration seed."),
    lr: float = typer.Option(0.01, help="Learning rate of the K/V finetuning (one SGD epoch over the demonstrations)."),
    out: Path | None = typer.Option(None, help="Write the numbers as JSON here."),
) -> None:
    """The dual form on one prompt, in float64, layer by layer, each column explained.

    Checks that the attention output equals (W_ZSL + ΔW_ICL) q under relaxed
    linear attention, compares ‖ΔW_ICL‖ with ‖W_ZSL‖, and asks whether the
    ICL update ΔW_ICL q points where K/V finetuning on the same
    demonstrations moves the attention output.

    Examples:

      dualform walkthrough
      dualform walkthrough --task country-region --shots 8
    """
    from dualform.experiments.walkthrough import run_walkthrough
    from dualform.viz.terminal import print_walkthrough

    check_learning_rate(lr, "--lr")
    if out is not None:
        check_output_dir(out.parent)
    result = run_walkthrough(model, task=task, shots=shots, seed=seed, lr=lr)
    print_walkthrough(result, console)
    if out is not None:
        from dualform.infra.io import write_json_atomic

        write_json_atomic(out, result)
        console.print(f"wrote {escape(str(out))}")


@reproduce_app.command("dai")
def reproduce_dai(
    model: str = typer.Option(DEFAULT_MODEL, help="Model name."),
    tasks: str = TASKS,
    shots: int = SHOTS,
    out: Path = typer.Option(Path("results/dai"), help="Output directory (resumable)."),
    n_test: int = N_TEST,
    n_validation: int = N_VALIDATION,
    seeds: int = SEEDS,
    demo_seeds: str = DEMO_SEEDS,
    full_grid: bool = FULL_GRID,
    lr_grid: str = LR_GRID,
    layer_causal: bool = typer.Option(False, help="Layer-causal finetuning (Deutch et al.)."),
    untrained: bool = typer.Option(True, help="Also run the untrained-model baseline."),
    n_untrained: int = typer.Option(64, help="The untrained baseline on the first N test examples (0: all)."),
    attribution: bool = typer.Option(True, help="Head-by-head attribution maps."),
    batch_size: int = typer.Option(0, help="Queries per batch (0: from free memory; 1: no batching of queries, attribution or the LR grid)."),
    reuse_prefix: bool = typer.Option(True, help="Run the demonstrations once per task (KV cache)."),
    workers: int = typer.Option(1, help="Tasks at once, on threads sharing the model's weights: 2 on a 2-core CPU take ~0.9x the time but ~1.6 GiB more memory (README: Benchmarks). Numbers equal up to float rounding."),
    device: str = DEVICE,
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
    """Dai et al. 2023: ZSL / ICL / FT, every metric per layer and head, resumable.

    Writes OUT/results.json, OUT/attention_example.json and OUT/report.html
    and prints the paper-layout table. A rerun with the same options skips
    the finished tasks.

    Examples:

      dualform reproduce dai --out results/dai
      dualform reproduce dai --tasks country-region --shots 16 --out r/cr
    """
    from dualform.experiments.dai.protocol import run_dai
    from dualform.viz.tables import print_dai_table

    config = _dai_config(model, tasks, shots, n_test, n_validation, demo_seeds, full_grid, lr_grid,
                         seeds=seeds, layer_causal=layer_causal, untrained_baseline=untrained,
                         n_untrained=n_untrained or None, attribution=attribution, batch_size=batch_size or None,
                         reuse_prefix=reuse_prefix, workers=workers, device=device, dtype=dtype,
                         device_map=device_map or None, scaled_queries=scaled_queries,
                         keep_separator=keep_separator)
    results = run_dai(out, config, overwrite=overwrite)
    print_dai_table(results, console)
    console.print(f"wrote {escape(str(out / 'results.json'))}")
    if report:
        _write_report(out)


def _dai_config(model: str, tasks: str, shots: int, n_test: int, n_validation: int,
                demo_seeds: str, full_grid: bool, lr_grid: str, **options):
    import dataclasses

    from dualform.experiments.dai.config import DaiConfig
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
        fail(str(err))
    return config.with_full_grid() if full_grid else config


@app.command()
def sweep(
    models: str = typer.Option(DEFAULT_MODEL, help="Comma-separated model names."),
    tasks: str = TASKS,
    shots: int = SHOTS,
    out: Path = typer.Option(Path("results/sweep"), help="Output directory (one file per job)."),
    n_test: int = N_TEST,
    n_validation: int = N_VALIDATION,
    seeds: int = SEEDS,
    demo_seeds: str = DEMO_SEEDS,
    full_grid: bool = FULL_GRID,
    lr_grid: str = LR_GRID,
    executor: str = typer.Option("local", help="local (in this process) or ray."),
    address: str = typer.Option("", help="Ray cluster address ('auto', 'ray://head:10001'); empty: local Ray."),
    cpus_per_job: float = typer.Option(1, help="Ray: CPUs per job."),
    gpus_per_job: float = typer.Option(0, help="Ray: GPUs per job."),
    device: str = typer.Option("auto", help=DEVICE_HELP + " Resolved on each worker."),
    dtype: str = DTYPE,
    device_map: str = typer.Option("", help="'auto': spread each large HF model over its job's GPUs."),
    overwrite: bool = OVERWRITE,
) -> None:
    """The LR grid × demo seeds × tasks × models sweep of reproduce dai, on an executor.

    Each job writes OUT/jobs/<job>.json; a rerun skips finished jobs;
    OUT/<model>/results.json has the layout of reproduce dai (dualform
    report OUT/<model> works).

    Examples:

      dualform sweep --executor ray --full-grid --demo-seeds 1,2,3
      dualform sweep --executor ray --address auto --gpus-per-job 1
    """
    from dualform.experiments.dai.sweep import model_slug, run_sweep
    from dualform.infra.executors import get_executor
    from dualform.viz.tables import print_dai_table

    config = _dai_config(models.split(",")[0], tasks, shots, n_test, n_validation, demo_seeds,
                         full_grid, lr_grid, seeds=seeds, device=device, dtype=dtype,
                         device_map=device_map or None)
    kwargs = {"cpus_per_job": cpus_per_job, "gpus_per_job": gpus_per_job} if executor == "ray" else {}
    try:
        runner = get_executor(executor, address=address or None, **kwargs)
        results = run_sweep(out, config, [m for m in models.split(",") if m], runner,
                            overwrite=overwrite)
    except ImportError as err:  # ray not installed (expected failures go through the group)
        fail(str(err))
    for name, result in results.items():
        print_dai_table(result, console)
        for failure in result.failed_jobs:
            console.print(f"[red]failed job[/] {escape(failure['job'])}: {escape(failure['error'])} "
                          "(rerun to retry)")
        console.print(f"wrote {escape(str(out / model_slug(name) / 'results.json'))}")


def _write_report(out: Path) -> None:
    from dualform.viz.report import write_report

    console.print(f"wrote {escape(str(write_report(out)))}")


@reproduce_app.command("regression")
def reproduce_regression(
    out: Path = typer.Option(Path("results/regression"), help="Output directory."),
    device: str = DEVICE,
) -> None:
    """von Oswald et al. 2023: LSA ≡ GD construction, trained LSA vs GD / GD++.

    Example:

      dualform reproduce regression --out results/regression
    """
    from dualform.experiments.vonoswald import RegressionConfig, run_regression
    from dualform.models.load import resolve_device
    from dualform.viz.terminal import print_table

    check_output_dir(out)
    result = run_regression(out, config=RegressionConfig(device=resolve_device(device).type))
    rows = [[f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "–"))
             for k in ("steps", "gd", "gd_eta", "gdpp", "lsa", "paper", "model_cos",
                       "model_diff", "preds_diff")] for row in result["table"]]
    print_table(console, ("steps / layers", "GD (tuned η)", "η", "GD++", "trained LSA", "paper GD",
                          "model cos", "model diff", "preds diff"), rows,
                title="LSA vs GD (½·MSE test loss)")
    for name, check in result["targets"].items():
        console.print(f"  {'✓' if check['met'] else '✗'} {name}: {check['value']:.4g} (target {check['target']})")
    console.print(f"wrote {escape(str(out / 'results.json'))}")


@reproduce_app.command("momentum")
def reproduce_momentum(
    out: Path = typer.Option(Path("results/momentum"), help="Output directory."),
    device: str = DEVICE,
    seeds: int = typer.Option(8, min=2, help="Seeds 0..N-1: one vanilla and one momentum twin each."),
    workers: int = typer.Option(2, min=1, help="Training processes in parallel (1 thread each)."),
) -> None:
    """Dai et al. 2023 §5: vanilla vs momentum attention, trained from scratch, paired by seed.

    Example:

      dualform reproduce momentum --out results/momentum
    """
    from dualform.experiments.momentum import MomentumConfig, run_momentum
    from dualform.models.load import resolve_device
    from dualform.viz.momentum import summary_rows
    from dualform.viz.terminal import print_table

    check_output_dir(out)
    config = MomentumConfig(device=resolve_device(device).type, seeds=tuple(range(seeds)),
                            workers=workers)
    result = run_momentum(out, config=config)
    header, rows = summary_rows(result)
    print_table(console, header, [[escape(str(c)) for c in row] for row in rows],
                title="vanilla vs momentum: mean [95 % interval] over seeds")
    console.print(escape(result["verdict"]["text"]))
    console.print(f"wrote {escape(str(out / 'results.json'))}")


@app.command()
def report(results_dir: Path = typer.Argument(Path("results/dai"), help="A results directory.")) -> None:
    """Write RESULTS_DIR/report.html: one self-contained page with tables and every figure.

    Works on the output of reproduce dai (and picks up ../regression and
    ../momentum beside it), of a sweep (OUT/<model>) or of another
    experiment. Reads results only; loads no model.

    Example:

      dualform report results/dai
    """
    from dualform.infra.lock import locked
    from dualform.viz.report import write_report

    if not (results_dir / "results.json").exists():
        fail(f"no results.json in {results_dir}; run `dualform reproduce dai --out {results_dir}` first")
    with locked(results_dir):  # a run still writing there: DirectoryBusyError, one line
        path = write_report(results_dir)  # SchemaVersionError: one line
    console.print(f"wrote {escape(str(path))}")


@app.command()
def bench(
    model: str = typer.Option(DEFAULT_MODEL, help="Model name."),
    repeats: int = typer.Option(5, help="Timed repeats per measurement (median)."),
    device: str = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    end_to_end: bool = typer.Option(False, help="Also time the default reproduce dai, a --many-seeds run, seed sharing and reuse+batching on vs off (~40 min on 2 CPU cores)."),
    many_seeds: int = typer.Option(10, help="With --end-to-end: also time reproduce dai with this many seeds (0: skip)."),
    keep: Path | None = typer.Option(None, help="With --end-to-end: keep the timed runs' results in KEEP/default and KEEP/seeds-N."),
    pythia_shape: bool = typer.Option(True, help="Also time capture and dual_form on a random Pythia-160M-shaped model."),
    dtype: str = DTYPE,
) -> None:
    """Performance ratios against baselines measured in the same run.

    Examples:

      dualform bench
      dualform bench --json --end-to-end
    """
    import contextlib
    import json
    import sys

    from dualform.infra.bench import run_bench
    from dualform.models.load import resolve_device
    from dualform.viz.terminal import bench_rows, print_table

    check_count(repeats, "--repeats")
    if many_seeds < 0:
        check_count(many_seeds, "--many-seeds (0: no many-seed run)")
    with contextlib.redirect_stdout(sys.stderr):  # libraries print progress; keep stdout clean
        result = run_bench(model, repeats=repeats, device=resolve_device(device).type,
                           end_to_end=end_to_end, dtype=dtype, pythia_shape=pythia_shape,
                           many_seeds=many_seeds or None, keep=keep)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    rows = bench_rows(result)
    print_table(console, ("measurement", "value"), rows,
                title=f"dualform bench ({result['device']}, {result['dtype']}, {result['threads']} threads)")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # python -m dualform.cli
    main()
