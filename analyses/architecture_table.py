"""Write README's "Supported architectures" table from the architecture matrix.

    python analyses/architecture_table.py          # rewrite the table in README.md
    python analyses/architecture_table.py --check  # exit 1 when README's table is stale

Every cell comes from running the matrix's checks (``dualform.experiments.architectures``) on a
tiny random model of each family in float64 — the same checks ``tests/test_architectures.py``
asserts, so the README cannot claim what the suite does not test (~1 min on 2 CPU cores).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import torch

from dualform import load_model
from dualform.experiments.architectures import (
    CHECK_FUNCTIONS,
    FAMILIES,
    cell,
    feature_columns,
    table_markdown,
    tiny_family_dir,
)

README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = re.compile(r"(<!-- architecture-table -->\n)(.*?)(<!-- /architecture-table -->)", re.S)


def matrix_rows() -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as root:
        for family in FAMILIES:
            model = load_model(str(tiny_family_dir(family, Path(root))), dtype="float64")
            row = feature_columns(model)
            for check, fn in CHECK_FUNCTIONS.items():
                try:
                    row[check] = cell(check, fn(model), model)
                except Exception as err:  # a refusal or failure is what the cell reports
                    row[check] = cell(check, f"{type(err).__name__}", model)
            rows[family] = row
            print(family, " | ".join(row.values()), file=sys.stderr)
    return rows


def main() -> int:
    torch.set_num_threads(1)
    table = table_markdown(matrix_rows())
    text = README.read_text()
    if not MARKERS.search(text):
        raise SystemExit("README.md has no <!-- architecture-table --> markers")
    current = MARKERS.search(text).group(2)
    if "--check" in sys.argv:
        print("README table is current" if current == table else "README table is stale")
        return int(current != table)
    README.write_text(MARKERS.sub(lambda m: m.group(1) + table + m.group(3), text))
    print(f"wrote the table of {len(FAMILIES)} families to {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
