"""Tests for dualform.experiments.vonoswald: data, the LSA ≡ GD construction (float64), GD++, hooks."""

from __future__ import annotations

import pytest
import torch

from dualform.experiments.vonoswald.data import make_tokens, read_prediction, sample_tasks
from dualform.experiments.vonoswald.gd import (
    constructed_lsa,
    curvature_correction,
    gd_construction,
    gd_predict,
    gdpp_construction,
    gdpp_predict,
    in_context_gradient,
    in_context_loss,
)
from dualform.experiments.vonoswald.lsa import build_lsa

F64 = torch.float64
ATOL = 1e-12


def _tasks(batch=64, n=10, d=10, seed=0, **kw):
    return sample_tasks(batch, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64, **kw)


def _autograd_gd(batch, eta, steps, w0):
    """Independent reference: K steps of W ← W − η ∇L with ∇L from autograd."""
    w = w0.expand_as(batch.x_test).clone()
    for _ in range(steps):
        w = w.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(in_context_loss(w, batch.x, batch.y).sum(), w)
        w = w - eta * grad
    return (w * batch.x_test).sum(-1), w.detach()


def test_sample_tasks_layout_ranges_and_seed():
    b = _tasks(batch=32, n=7, d=5, x_range=0.5)
    assert b.x.shape == (32, 7, 5) and b.y.shape == (32, 7) and b.x_test.shape == (32, 5)
    assert b.x.abs().max() <= 0.5 and b.x_test.abs().max() <= 0.5
    torch.testing.assert_close(b.y, torch.einsum("bnd,bd->bn", b.x, b.w), rtol=0, atol=ATOL)
    torch.testing.assert_close(b.y_test, (b.x_test * b.w).sum(-1), rtol=0, atol=ATOL)
    tokens = b.tokens()
    assert tokens.shape == (32, 8, 6)
    assert torch.equal(tokens[:, :7, :5], b.x) and torch.equal(tokens[:, :7, 5], b.y)
    assert torch.equal(tokens[:, 7, :5], b.x_test) and torch.all(tokens[:, 7, 5] == 0)
    again = _tasks(batch=32, n=7, d=5, x_range=0.5)
    assert torch.equal(again.x, b.x) and torch.equal(again.w, b.w)
    wide = _tasks(batch=2000, n=7, d=5, x_range=1.0)
    assert wide.x.abs().max() > 0.9  # the paper's U(−1, 1)


def test_noise_only_on_context_targets():
    clean, noisy = _tasks(seed=3), _tasks(seed=3, noise=0.5)
    assert torch.equal(clean.x, noisy.x) and torch.equal(clean.y_test, noisy.y_test)
    assert (clean.y - noisy.y).abs().mean() > 0.1


def test_query_token_starts_at_minus_w0_x():
    b = _tasks(batch=4)
    w0 = torch.randn(10, dtype=F64)
    tokens = make_tokens(b.x, b.y, b.x_test, w0=w0)
    torch.testing.assert_close(read_prediction(tokens), b.x_test @ w0, rtol=0, atol=ATOL)


def test_gd_construction_matrices_match_paper():
    d, n, eta = 4, 6, 1.5
    w0 = torch.arange(1.0, d + 1, dtype=F64)
    c = gd_construction(d, eta, n, w0=w0)
    expected_kq = torch.zeros(d + 1, d + 1, dtype=F64)
    expected_kq[:d, :d] = torch.eye(d, dtype=F64)
    assert torch.equal(c["W_K"], expected_kq) and torch.equal(c["W_Q"], expected_kq)
    assert torch.all(c["W_V"][:d] == 0)
    assert torch.equal(c["W_V"][d, :d], w0) and c["W_V"][d, d] == -1
    assert torch.equal(c["P"], torch.eye(d + 1, dtype=F64) * eta / n)


def test_in_context_gradient_matches_autograd():
    b = _tasks()
    w = torch.randn(64, 10, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(in_context_loss(w, b.x, b.y).sum(), w)
    torch.testing.assert_close(in_context_gradient(w.detach(), b.x, b.y), grad, rtol=0, atol=ATOL)


@pytest.mark.parametrize("use_w0", [False, True])
def test_one_lsa_layer_equals_one_gd_step(use_w0):
    b = _tasks(seed=1)
    w0 = torch.randn(10, dtype=F64) if use_w0 else torch.zeros(10, dtype=F64)
    eta = 3.7
    model = constructed_lsa(10, 10, [eta], w0=w0 if use_w0 else None)
    pred = model.predict(b.tokens(w0 if use_w0 else None))
    ref, _ = _autograd_gd(b, eta, 1, w0)
    assert (pred - ref).abs().max() < ATOL
    assert (pred - gd_predict(b.x, b.y, b.x_test, eta, 1, w0)[0]).abs().max() < ATOL


@pytest.mark.parametrize("use_w0", [False, True])
def test_k_lsa_layers_equal_k_gd_steps_and_track_residuals(use_w0):
    b, eta, k_max = _tasks(seed=2), 2.5, 5
    w0 = torch.randn(10, dtype=F64) if use_w0 else torch.zeros(10, dtype=F64)
    model = constructed_lsa(10, 10, [eta] * k_max, w0=w0 if use_w0 else None)
    tokens = b.tokens(w0 if use_w0 else None)
    _, cache = model.run_with_cache(tokens)
    for k in range(1, k_max + 1):
        pred_ref, w_k = _autograd_gd(b, eta, k, w0)
        resid = cache[f"blocks.{k - 1}.hook_resid_post"]
        assert (read_prediction(resid) - pred_ref).abs().max() < ATOL
        # context y-entries hold y_j − (W_k − W0) x_j: the GD residual y_j − W_k x_j when W0 = 0
        tracked = b.y - torch.einsum("bnd,bd->bn", b.x, w_k - w0)
        assert (resid[:, :-1, -1] - tracked).abs().max() < ATOL
        assert torch.equal(resid[:, :, :-1], tokens[:, :, :-1])  # inputs x are untouched
        if not use_w0:
            residual = b.y - torch.einsum("bnd,bd->bn", b.x, w_k)
            assert (resid[:, :-1, -1] - residual).abs().max() < ATOL


def test_curvature_correction_is_matrix_product():
    b = _tasks(batch=8)
    gamma = 0.3
    gram = torch.einsum("bni,bnj->bij", b.x, b.x)
    expected = torch.einsum("bij,bj->bi", torch.eye(10, dtype=F64) - gamma * gram, b.x_test)
    got = curvature_correction(b.x_test[:, None], b.x, gamma)[:, 0]
    assert (got - expected).abs().max() < ATOL


def test_gdpp_equals_preconditioned_gd_and_its_lsa_construction():
    b = _tasks(seed=4)
    etas, gammas = [5.0, 4.0, 3.0], [0.2, -0.1, 0.3]
    pred = gdpp_predict(b.x, b.y, b.x_test, etas, gammas)
    # independent form: W ← W − η_l ∇L(W) A_lᵀA_l,  A_{l+1} = (I − γ_l A_l S A_lᵀ) A_l
    eye = torch.eye(10, dtype=F64).expand(64, 10, 10)
    gram, a, w = torch.einsum("bni,bnj->bij", b.x, b.x), eye.clone(), torch.zeros(64, 10, dtype=F64)
    for eta, gamma in zip(etas, gammas, strict=True):
        precond = a.transpose(1, 2) @ a
        w = w - eta * torch.einsum("bi,bij->bj", in_context_gradient(w, b.x, b.y), precond)
        a = (eye - gamma * a @ gram @ a.transpose(1, 2)) @ a
    assert (pred - (w * b.x_test).sum(-1)).abs().max() < ATOL
    lsa = constructed_lsa(10, 10, etas, gammas=gammas)
    assert (lsa.predict(b.tokens()) - pred).abs().max() < ATOL
    one_step = gdpp_predict(b.x, b.y, b.x_test, [4.0], [0.5])
    assert (one_step - gd_predict(b.x, b.y, b.x_test, 4.0, 1)[0]).abs().max() < ATOL
    c = gdpp_construction(10, 4.0, 0.5, 10)
    assert torch.equal(c["P"][:10, :10], -0.5 * torch.eye(10, dtype=F64))


REQUIRED_HOOKS = [
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "hook_resid_pre",
    "hook_resid_post",
]


def test_hook_names_shapes_and_interventions():
    torch.manual_seed(0)
    model = build_lsa(10, 2, n_heads=3, d_head=4, init_scale=1.0).double()
    for layer in range(2):
        for hook in REQUIRED_HOOKS:
            assert f"blocks.{layer}.{hook}" in model.hook_dict
    tokens = _tasks(batch=5).tokens()
    out, cache = model.run_with_cache(tokens)
    for name in ("q", "k", "v", "z"):
        assert cache[f"blocks.1.attn.hook_{name}"].shape == (5, 11, 3, 4)
    assert torch.equal(cache["blocks.1.hook_resid_post"], out)
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    scores = cache["blocks.0.attn.hook_attn_scores"]
    assert scores.shape == (5, 3, 11, 11) and torch.all(scores[..., -1] == 0)  # query is no key
    zero_z = lambda z, hook: torch.zeros_like(z)  # noqa: E731
    ablated = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_z"), zero_z)])
    assert torch.equal(ablated, tokens)
    assert model.hook_dict["blocks.0.attn.hook_q"].name == "blocks.0.attn.hook_q"


def test_query_token_never_influences_context_tokens():
    torch.manual_seed(1)
    model = build_lsa(10, 3, n_heads=2, init_scale=1.0).double()
    tokens = _tasks(batch=4).tokens()
    moved = tokens.clone()
    moved[:, -1] += 1.0
    assert torch.equal(model(tokens)[:, :-1], model(moved)[:, :-1])


def test_softmax_mlp_variant_hooks_and_pattern():
    torch.manual_seed(0)
    model = build_lsa(10, 1, n_heads=2, attn="softmax", mlp=True).double()
    out, cache = model.run_with_cache(_tasks(batch=3).tokens())
    pattern = cache["blocks.0.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(3, 2, 11, dtype=F64))
    assert torch.all(pattern[..., -1] == 0)
    for name in ("hook_resid_mid", "hook_mlp_out", "mlp.hook_pre", "mlp.hook_post"):
        assert f"blocks.0.{name}" in cache
    mid = cache["blocks.0.hook_resid_mid"]
    torch.testing.assert_close(out, mid + cache["blocks.0.hook_mlp_out"], rtol=0, atol=ATOL)
