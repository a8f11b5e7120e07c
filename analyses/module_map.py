"""Print the package's module map, assembled from each folder's file map (its ``__init__``
docstring), or check that README.md holds the current one.

    python analyses/module_map.py            # print the map
    python analyses/module_map.py --check    # exit 1 if README.md's map is stale
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dualform"
ENTRY = re.compile(r"^ {4}(\S+\.py|\S+/)\s{2,}(.*)$")
README_BLOCK = re.compile(r"(## Module map\n\n```\n)(.*?)(```)", re.S)


def file_map(folder: Path) -> dict[str, str]:
    """``{entry: role}`` from the file map in ``folder/__init__.py``'s docstring."""
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()), clean=False) or ""
    entries: dict[str, str] = {}
    last = None
    for line in doc.splitlines():
        match = ENTRY.match(line)
        if match:
            last = match.group(1)
            entries[last] = match.group(2).strip()
        elif last and line.startswith(" " * 8) and line.strip():
            entries[last] += " " + line.strip()
        else:
            last = None
    return entries


def members(folder: Path) -> list[str]:
    """The modules and subpackages a folder's file map must list."""
    files = [p.name for p in folder.glob("*.py") if p.name != "__init__.py"]
    dirs = [p.name + "/" for p in folder.iterdir() if (p / "__init__.py").exists()]
    return sorted(files + dirs)


def module_map(folder: Path = PACKAGE, indent: int = 2) -> str:
    lines = [f"{folder.name}/"] if folder == PACKAGE else []
    entries = file_map(folder)
    width = max(map(len, entries), default=0) + 2
    for name, role in entries.items():
        lines.append(" " * indent + name.ljust(width) + role)
        if name.endswith("/"):
            lines.append(module_map(folder / name.rstrip("/"), indent + 2))
    return "\n".join(line for line in lines if line)


def readme_map(readme: Path = ROOT / "README.md") -> str:
    match = README_BLOCK.search(readme.read_text())
    return match.group(2).rstrip("\n") if match else ""


if __name__ == "__main__":
    current = module_map()
    if "--check" in sys.argv:
        if readme_map() != current:
            print("README.md's module map is stale: run python analyses/module_map.py --write")
            sys.exit(1)
    elif "--write" in sys.argv:
        readme = ROOT / "README.md"
        text = README_BLOCK.sub(lambda m: m.group(1) + current + "\n" + m.group(3), readme.read_text())
        readme.write_text(text)
    else:
        print(current)
