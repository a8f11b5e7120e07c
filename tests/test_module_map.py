"""The folder file maps list exactly the files there, and README.md shows the current map."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("module_map", ROOT / "analyses" / "module_map.py")
module_map = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module_map)

PACKAGES = sorted(p.parent for p in (ROOT / "dualform").rglob("__init__.py"))


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_folder_maps_exactly_its_files(folder):
    assert sorted(module_map.file_map(folder)) == module_map.members(folder)


def test_readme_module_map_is_current():
    assert module_map.readme_map() == module_map.module_map(), (
        "README.md's module map is stale: python analyses/module_map.py --write"
    )
