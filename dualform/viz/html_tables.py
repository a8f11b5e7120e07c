"""HTML tables of already formatted rows, and of any JSON value without knowing its schema
(the report's building blocks; nothing here knows a results layout)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

import numpy as np


def html_table(header: Sequence[str] | None, rows: Sequence[Sequence], css: str = "kv", *,
               numeric: bool = False) -> str:
    """A table of already formatted rows; the first cell labels the row, ``numeric`` aligns the
    others as numbers."""
    num = ' class="num"' if numeric else ""
    body = "".join("<tr>" + "".join(f"<td{num if i else ''}>{html.escape(str(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    return f'<table class="{css}">{head}{body}</table>' if body else ""


def pairs_table(rows: Sequence[tuple[str, str]], header: tuple[str, str] | None = None) -> str:
    """A two-column table of already formatted (label, value) rows."""
    return html_table(header, rows)


def percent(value) -> str:
    """An accuracy in percent; a string (e.g. ``"diverged: …"``) as it is."""
    if isinstance(value, str):
        return value
    return "–" if value is None else f"{value:.1f} %"


def fmt(value) -> str:
    """A compact cell: floats to 4 significant digits, lists joined, ``None`` → –."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and _numeric(value) and len(value) > 8:
        return _summary(np.array(value, dtype=float))
    if isinstance(value, list | tuple) and all(not isinstance(v, list | dict) for v in value):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, list | dict):
        text = json.dumps(value, default=str)
        return text if len(text) <= 160 else text[:157] + "…"
    return str(value)


def _summary(arr: np.ndarray) -> str:
    """A long numeric list as its size, shape and the mean / min / max of its defined values
    (an undefined entry is ``nan``, e.g. SimAM_Δ at an unchanged layer); no warning when none is."""
    head = f"{arr.size} values, shape {list(arr.shape)}"
    defined = arr[~np.isnan(arr)]
    if not defined.size:
        return f"{head}: all undefined (nan)"
    undefined = f", {arr.size - defined.size} undefined" if defined.size < arr.size else ""
    return (f"{head}: mean {defined.mean():.4g}, min {defined.min():.4g}, "
            f"max {defined.max():.4g}{undefined}")


def _numeric(values: list) -> bool:
    try:
        np.array(values, dtype=float)
    except (TypeError, ValueError):
        return False
    return True


def flatten(data, prefix: str = "", depth: int = 6):
    """``(key › path, leaf)`` pairs, underscores as spaces; lists are leaves."""
    if isinstance(data, dict) and depth > 0:
        for key, value in data.items():
            name = str(key).replace("_", " ")
            yield from flatten(value, f"{prefix} › {name}" if prefix else name, depth - 1)
    else:
        yield prefix or "value", data


def records_table(rows: list[dict]) -> str:
    """A list of dicts as one table (columns: the union of their keys, first-seen order)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f'<table class="records"><tr>{head}</tr>{body}</table>'


def json_tables(data, *, max_rows: int = 400) -> str:
    """Any JSON value as HTML tables, without knowing its schema.

    Each top-level key becomes a sub-heading; lists of records become tables with one row per
    record; everything else is flattened to ``key › path → value`` rows (numeric lists
    summarised). At most ``max_rows`` rows per table.
    """
    if not isinstance(data, dict):
        data = {"value": data}
    out = []
    for key, value in data.items():
        out.append(f"<h4>{html.escape(str(key).replace('_', ' '))}</h4>")
        if _is_records(value):
            out.append(records_table(value[:max_rows]))
        else:
            pairs = list(flatten(value, "" if isinstance(value, dict) else str(key)))[:max_rows]
            out.append(pairs_table([(k, fmt(v)) for k, v in pairs]))
    return "".join(out)


def _is_records(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
