"""Installed package versions, read from their metadata (the packages are not imported)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_versions() -> dict:
    """Installed versions, by distribution name (TransformerLens has no ``__version__``); reading
    them imports none of the packages, so it costs milliseconds."""

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return {name: installed(dist) for name, dist in (
        ("dualform", "dualform"), ("torch", "torch"), ("transformers", "transformers"),
        ("transformer_lens", "transformer-lens"))}
