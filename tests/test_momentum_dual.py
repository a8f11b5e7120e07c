"""Dual form with momentum: z = (W_ZSL + ΔW_ICL) q + m_demo + m_query, exactly (float64)."""

from __future__ import annotations

import pytest
import torch

from dualform.core.momentum import momentum_term
from dualform.core.momentum_dual import momentum_dual_form, momentum_split
from dualform.experiments.momentum.model import MomentumLM, MomentumLMConfig
from dualform.models.load import load_model

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-10


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama", dtype=torch.float64)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(3, 250, (1, 15), generator=torch.Generator().manual_seed(3))


def test_momentum_split_matches_loop():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 11, 4, dtype=torch.float64, generator=gen)  # [head, pos, d]
    eta = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    is_demo = torch.zeros(11, dtype=torch.bool)
    is_demo[1:7] = True
    m_demo, m_query = momentum_split(values, eta, is_demo)
    demo_loop = torch.zeros(3, 4, dtype=torch.float64)
    query_loop = torch.zeros(3, 4, dtype=torch.float64)
    for i in range(10):
        part = eta[:, None] ** (10 - i) * values[:, i]
        if is_demo[i]:
            demo_loop += part
        else:
            query_loop += part
    assert torch.allclose(m_demo, demo_loop, atol=TOL, rtol=0)
    assert torch.allclose(m_query, query_loop, atol=TOL, rtol=0)
    assert torch.allclose(m_demo + m_query, momentum_term(values, eta)[:, -1], atol=TOL, rtol=0)


@pytest.mark.parametrize("eta", [0.5, [0.1, 0.3, 0.6, 0.9]])
def test_relaxed_momentum_dual_form_is_exact_on_bridge(llama, prompt, eta):
    eta = torch.tensor(eta, dtype=torch.float64) if isinstance(eta, list) else eta
    mdf = momentum_dual_form(llama, prompt, n_demo_tokens=9, eta=eta, demo_start=1)
    n_layers, n_heads, d_head = 2, 4, 16
    assert mdf.m_demo.shape == (n_layers, n_heads, d_head)
    assert (mdf.output() - mdf.dual.z).abs().max() < TOL
    # without the momentum pieces the plain dual form no longer matches the model
    assert (mdf.dual.linear_attention_output() - mdf.dual.z).abs().max() > 1e-3
    split = mdf.icl_update() + mdf.zsl_output()
    assert torch.allclose(split, mdf.output(), atol=TOL, rtol=0)
    share = mdf.momentum_share()
    assert ((share > 0) & (share < 1)).all()


def test_eta_zero_reduces_to_the_plain_dual_form(llama, prompt):
    mdf = momentum_dual_form(llama, prompt, n_demo_tokens=9, eta=0.0, demo_start=1)
    assert mdf.m_demo.abs().max() == 0 and mdf.m_query.abs().max() == 0
    assert (mdf.dual.linear_attention_output() - mdf.dual.z).abs().max() < TOL


def test_native_momentum_model_uses_its_own_eta(prompt):
    cfg = MomentumLMConfig(
        d_vocab=260, n_ctx=32, d_model=32, n_heads=4, n_key_value_heads=2, eta=0.7,
        learn_eta=True,
    )
    model = MomentumLM(cfg).double()
    with torch.no_grad():
        model.blocks[1].attn.eta_logit.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    mdf = momentum_dual_form(model, prompt, n_demo_tokens=9, demo_start=1)
    assert torch.allclose(mdf.eta, model.etas())
    assert (mdf.output() - mdf.dual.z).abs().max() < TOL
