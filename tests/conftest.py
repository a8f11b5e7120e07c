"""Shared fixtures: tiny random models (fast) and the real embedded model (loaded once)."""

from __future__ import annotations

from jaxtyping import install_import_hook

# Runtime shape/dtype checks of every jaxtyping annotation in the package (beartype), for the
# whole session: installed before the first dualform module is imported.
_JAXTYPING_HOOK = install_import_hook("dualform", "beartype.beartype")

import pytest  # noqa: E402
import torch  # noqa: E402

from dualform import load_model  # noqa: E402

TINY = ["tiny-llama", "tiny-gpt2"]


@pytest.fixture(scope="session", params=TINY)
def tiny64(request):
    """Each tiny model variant in float64 (rotary+GQA and learned positions)."""
    return load_model(request.param, dtype=torch.float64)


@pytest.fixture(scope="session")
def smol():
    """The embedded pretrained SmolLM2-135M in float32."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol64():
    """The embedded pretrained SmolLM2-135M in float64 (for exact identities)."""
    return load_model("smollm2-135m", dtype=torch.float64)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def analysis():
    """``analysis("flop_floor")``: a script of ``analyses/`` loaded as a module."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "analyses" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
