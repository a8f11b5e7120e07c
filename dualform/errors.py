"""Expected failures: one base class and the argument checks every public entry point shares.

A :class:`DualformError` is a failure the user can fix (bad input, a setting that does not
apply, a full disk, a busy results directory); its message says what happened and what to do.
The ``dualform`` command prints such an error as one line and exits with status 2; anything
else is a bug and keeps its traceback. This module imports nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class DualformError(Exception):
    """An expected failure; the message names the input at fault and what to do."""


class InvalidArgumentError(DualformError, ValueError):
    """An argument outside its valid range (a negative learning rate, zero test examples…)."""


def check_learning_rate(lr: float, name: str = "The learning rate") -> float:
    """``lr`` must be a finite number > 0 (a negative rate is gradient *ascent*)."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        why = " (a negative rate is gradient ascent, not finetuning)" if isinstance(lr, int | float) and lr < 0 else ""
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {lr!r}{why}.")
    return float(lr)


def check_learning_rates(lrs: Sequence[float], name: str = "learning-rate grid") -> tuple[float, ...]:
    """A non-empty sequence of valid learning rates."""
    if len(lrs) == 0:
        raise InvalidArgumentError(f"The {name} is empty; give at least one learning rate.")
    return tuple(check_learning_rate(lr, f"Every rate of the {name}") for lr in lrs)


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """An integer count ``>= minimum`` (``name`` as the user wrote it, e.g. ``"--n-test"``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_not_empty(items: Sequence, name: str) -> None:
    """``items`` must hold at least one element."""
    if len(items) == 0:
        raise InvalidArgumentError(f"{name} is empty; give at least one.")


def is_expected(err: BaseException) -> bool:
    """True for failures the CLI reports as one message: :class:`DualformError` and any
    ``OSError`` (full disk, permissions, a file that is not where it should be…)."""
    return isinstance(err, DualformError | OSError)
