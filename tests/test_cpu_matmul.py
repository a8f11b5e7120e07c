"""oneDNN float32 linears (dualform.models.cpu_matmul): same numbers as ``F.linear`` up to
float32 rounding, input gradients, the trained-weight and float64 fallbacks, the undo."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dualform.models import cpu_matmul
from dualform.models.cpu_matmul import (
    BACKEND_ENV,
    cpu_matmul_setting,
    fast_linear,
    fast_linears,
    install_fast_linears,
    onednn_available,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="no oneDNN linear in this build")


@pytest.fixture
def forced():
    """oneDNN chosen whatever this CPU measures (the decision is cached per process)."""
    with cpu_matmul_setting("onednn"):
        yield


def _layer(d_in=48, d_out=80, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(d_in, d_out, bias=bias)
    layer.requires_grad_(False)
    return layer


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_input_gradient_equal_f_linear(forced, bias):
    layer = _layer(bias=bias)
    x = torch.randn(3, 7, 48, dtype=torch.float64).float().requires_grad_(True)
    out = fast_linear(x, layer.weight, layer.bias)
    ref = F.linear(x, layer.weight, layer.bias)
    assert out.shape == ref.shape == (3, 7, 80)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, x, upstream)
    (g_ref,) = torch.autograd.grad(ref, x, upstream)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    producer = out.grad_fn.next_functions[0][0]  # under the reshape back to [3, 7, 80]
    assert "FrozenLinear" in type(producer).__name__


@needs_onednn
def test_trained_weight_and_float64_take_the_default_path(forced):
    layer = _layer()
    layer.weight.requires_grad_(True)  # a weight being trained: autograd's own path
    x = torch.randn(5, 48)
    out = fast_linear(x, layer.weight, layer.bias)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    (gw,) = torch.autograd.grad(out.sum(), layer.weight)
    torch.testing.assert_close(gw, torch.ones(5, 80).t() @ x)
    double = _layer().double()
    x64 = torch.randn(5, 48, dtype=torch.float64)  # float64 identities stay bit-exact
    assert torch.equal(fast_linear(x64, double.weight, double.bias),
                       F.linear(x64, double.weight, double.bias))


@needs_onednn
def test_default_setting_keeps_f_linear_bit_for_bit():
    with cpu_matmul_setting("default"):
        layer = _layer()
        x = torch.randn(6, 48)
        assert torch.equal(fast_linear(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias))
        assert cpu_matmul.cpu_matmul_backend() == "default"


def test_unknown_setting_names_the_choices(monkeypatch, tmp_path):
    from dualform.errors import DualformError
    from dualform.experiments.dai.config import DaiConfig
    from dualform.experiments.dai.protocol import run_dai

    monkeypatch.setenv(BACKEND_ENV, "mkl")
    with pytest.raises(ValueError, match="auto, onednn or default"):
        cpu_matmul.backend_setting()
    with pytest.raises(DualformError, match="DUALFORM_CPU_MATMUL='mkl'"):  # one message, before any work
        run_dai(tmp_path / "run", DaiConfig(model="tiny-llama"), progress=False)
    assert not (tmp_path / "run").exists()


def test_measured_speedup_is_a_positive_ratio():
    if not onednn_available():
        pytest.skip("no oneDNN linear in this build")
    assert cpu_matmul.measured_speedup(16, 32, 32, repeats=2) > 0


@needs_onednn
def test_install_binds_every_linear_and_undo_restores(forced):
    model = nn.Sequential(_layer(48, 80), nn.ReLU(), _layer(80, 8, seed=1))
    x = torch.randn(4, 48)
    before = model(x)
    undo = install_fast_linears(model)
    assert all("forward" in vars(m) for m in model if isinstance(m, nn.Linear))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(model)  # a deep copy calls its own weights
    with torch.no_grad():
        twin[2].weight.zero_()
    assert torch.equal(twin(x), twin[2].bias.expand(4, 8))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    undo()
    assert not any("forward" in vars(m) for m in model if isinstance(m, nn.Linear))
    assert torch.equal(model(x), before)


@needs_onednn
def test_context_manager_leaves_the_model_as_it_was(forced):
    model = nn.Sequential(_layer())
    with fast_linears(model) as same:
        assert same is model and "forward" in vars(model[0])
    assert "forward" not in vars(model[0])


@needs_onednn
def test_frozen_embedded_model_matches_default_path(smol, forced):
    """The embedded model's logits and head-attribution gradients through oneDNN equal the
    default path's to float32 rounding (the run's models: frozen, linears installed)."""
    from dualform.core.attribution import icl_head_effects

    tokens = smol.to_tokens("great movie, loved it. Sentiment:")
    params = list(smol.parameters())
    flags = [p.requires_grad for p in params]
    smol.requires_grad_(False)
    try:
        with torch.no_grad():
            ref = smol(tokens)
        demo = slice(1, 4)
        ref_effects = icl_head_effects(smol, tokens, demo, [0, 1], 0)
        with fast_linears(smol):
            with torch.no_grad():
                out = smol(tokens)
            effects = icl_head_effects(smol, tokens, demo, [0, 1], 0)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(effects, ref_effects, rtol=1e-3, atol=1e-5)
    assert effects.abs().max() > 0


def test_auto_is_a_rule_on_the_cpu_capability_not_a_timing(monkeypatch):
    """``auto`` takes oneDNN exactly where PyTorch runs AVX-512 kernels, without timing anything:
    a timing probe near its threshold made two runs of one command take different paths."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
    probed = []
    monkeypatch.setattr(cpu_matmul, "measured_speedup", lambda *a, **k: probed.append(a) or 0.5)
    try:
        for capability, expected in (("AVX2", False), ("DEFAULT", False), ("AVX512", True)):
            monkeypatch.setattr(cpu_matmul, "cpu_capability", lambda c=capability: c)
            cpu_matmul.use_onednn.cache_clear()
            assert cpu_matmul.use_onednn() is expected, capability
            assert cpu_matmul.cpu_matmul_backend() == ("onednn" if expected else "default")
        assert probed == []  # nothing was timed
        monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: False)
        cpu_matmul.use_onednn.cache_clear()
        assert cpu_matmul.use_onednn() is False  # no oneDNN op in this build: the default path
    finally:
        cpu_matmul.use_onednn.cache_clear()  # the next caller decides on the real CPU
