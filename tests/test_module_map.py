"""The folder file maps list exactly the files there, and README.md shows the current map."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def module_map(analysis):
    return analysis("module_map")


PACKAGES = sorted(p.parent for p in (ROOT / "dualform").rglob("__init__.py"))


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_folder_maps_exactly_its_files(folder, module_map):
    assert sorted(module_map.file_map(folder)) == module_map.members(folder)


def test_readme_module_map_is_current(module_map):
    assert module_map.readme_map() == module_map.module_map(), (
        "README.md's module map is stale: python analyses/module_map.py --write"
    )
