"""The command line's plumbing: its one error path and the options several commands share.

Nothing here imports torch or TransformerLens, so ``dualform --help`` stays fast.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from dualform.errors import is_expected

#: Same value as dualform.models.load.DEFAULT_MODEL (tests/test_cli.py checks it); kept here so
#: building the command line does not import torch and TransformerLens.
DEFAULT_MODEL = "smollm2-135m"
#: Same as dualform.experiments.dai.config.DEFAULT_TASKS (checked by the tests).
DEFAULT_TASKS = ("afinn-sentiment", "afinn-sentiment-5", "vader-valence", "country-region",
                 "capital-region", "textblob-subjectivity")
#: cuda, then mps, then cpu (dualform.models.load.resolve_device).
DEVICE_HELP = "auto (cuda → mps → cpu), cpu, cuda or mps."

err_console = Console(stderr=True, soft_wrap=True)


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


def fail(message: str) -> None:
    """Print ``message`` as an error and exit with status 2."""
    print_error(message)
    raise typer.Exit(2)


# Options shared by `reproduce dai` and `sweep` (one definition, same meaning in both).
TASKS = typer.Option(",".join(DEFAULT_TASKS), show_default=False,
                     help="Comma-separated task names [default: " + ", ".join(DEFAULT_TASKS) + "].")
SHOTS = typer.Option(32, help="Demonstrations per prompt.")
N_TEST = typer.Option(200, help="Test examples per task (at most; all of a smaller test split).")
SEEDS = typer.Option(3, help="Independent demonstration sets (and finetuning orders); intervals over them.")
N_VALIDATION = typer.Option(12, help="Validation examples per task (LR/seed choice).")
DEMO_SEEDS = typer.Option("1,2", help="Demonstration seeds each replicate chooses from (replicate r adds 1000·r).")
FULL_GRID = typer.Option(False, help="Dai's full LR grid {1..9}x{0.1..0.0001}.")
LR_GRID = typer.Option("", help="Comma-separated learning rates (default: DaiConfig's).")
DTYPE = typer.Option("float32", help="float32, bfloat16 or float16 (float64 for identities). Half precision is faster but rounds the small hidden-state differences SimAOU and SimAM_Δ compare (README: Benchmarks).")
DEVICE = typer.Option("auto", help=DEVICE_HELP)
OVERWRITE = typer.Option(False, help="Results of other settings in --out: rename them aside (never deleted) and start afresh.")
