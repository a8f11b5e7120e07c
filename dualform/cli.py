"""``dualform`` command line: info, walkthrough, reproduce, report, bench."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dualform.models import DEFAULT_MODEL, ModelLoadError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce a paper's experiment.")
app.add_typer(reproduce_app, name="reproduce")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def info(model: str = typer.Argument(DEFAULT_MODEL, help="Model name (see README).")) -> None:
    """Print the model card and the hook names of one layer."""
    from dualform.models import load_model
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
    from dualform.walkthrough import run_walkthrough

    try:
        result = run_walkthrough(model, lr=lr, console=console)
    except ModelLoadError as err:
        _fail(str(err))
    if out is not None:
        from dualform.io import write_json_atomic

        write_json_atomic(out, result)
        console.print(f"wrote {out}")


@reproduce_app.command("regression")
def reproduce_regression(
    out: Path = typer.Option(Path("results/regression"), help="Output directory."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
) -> None:
    """von Oswald et al. 2023: LSA ≡ GD construction, trained LSA vs GD / GD++."""
    from dualform.regression import RegressionConfig, run_regression

    result = run_regression(out, config=RegressionConfig(device=device))
    console.print_json(json.dumps(result.get("summary", {}), default=str))
    console.print(f"wrote {out}/results.json")


@reproduce_app.command("momentum")
def reproduce_momentum(
    out: Path = typer.Option(Path("results/momentum"), help="Output directory."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
) -> None:
    """Dai et al. 2023 §5: vanilla vs momentum attention, trained from scratch."""
    from dualform.momentum import MomentumConfig, run_momentum

    result = run_momentum(out, config=MomentumConfig(device=device))
    console.print_json(json.dumps(result.get("summary", {}), default=str))
    console.print(f"wrote {out}/results.json")


def main() -> None:  # pragma: no cover - console entry point
    app()
