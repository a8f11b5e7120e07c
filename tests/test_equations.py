"""Each equation of dualform.core.equations against an independent float64 computation."""

import torch

from dualform.core.equations import (
    delta_w_ft,
    ft_patch_effect,
    icl_patch_effect,
    label_margin,
    linear_attention,
    linear_layer_dual,
    meta_gradient,
    softmax_split,
)

torch.manual_seed(0)


def test_meta_gradient_is_sum_of_outer_products():
    v, k = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    expected = sum(torch.outer(v[i], k[i]) for i in range(7))
    torch.testing.assert_close(meta_gradient(v, k), expected, atol=1e-12, rtol=0)


def test_linear_attention_is_unnormalised_attention():
    """(Σ v_i ⊗ k_i) q = Σ v_i (k_i · q): the dual of linear attention."""
    v, k, q = (torch.randn(6, 4, dtype=torch.float64) for _ in range(3))
    q = q[0]
    expected = sum(v[i] * (k[i] @ q) for i in range(6))
    torch.testing.assert_close(linear_attention(meta_gradient(v, k), q), expected, atol=1e-12, rtol=0)


def test_softmax_split_recombines_exactly():
    scores = torch.randn(3, 9, dtype=torch.float64)
    values = torch.randn(3, 9, 4, dtype=torch.float64)
    is_demo = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    lam, z_demo, z_query = softmax_split(scores, values, is_demo)
    z = torch.softmax(scores, -1).unsqueeze(-1).mul(values).sum(-2)
    recombined = lam.unsqueeze(-1) * z_demo + (1 - lam.unsqueeze(-1)) * z_query
    torch.testing.assert_close(recombined, z, atol=1e-12, rtol=0)
    torch.testing.assert_close(lam, torch.softmax(scores, -1)[:, :5].sum(-1), atol=1e-12, rtol=0)


def test_linear_layer_trained_by_gd_is_attention_over_its_inputs():
    """A real GD step on ½‖W x' − y‖² gives (W0 + ΔW) x = W0 x + Σ e_i (x'_i · x)."""
    d_in, d_out, n, lr = 5, 3, 8, 0.1
    w0 = torch.randn(d_out, d_in, dtype=torch.float64)
    xs, ys = torch.randn(n, d_in, dtype=torch.float64), torch.randn(n, d_out, dtype=torch.float64)
    w = w0.clone().requires_grad_(True)
    loss = 0.5 * ((xs @ w.T - ys) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, w)
    w_after = w0 - lr * grad
    errors = -lr * (xs @ w0.T - ys)  # e_i = −η ∂L/∂y_i
    x = torch.randn(4, d_in, dtype=torch.float64)
    torch.testing.assert_close(linear_layer_dual(w0, errors, xs, x), x @ w_after.T, atol=1e-12, rtol=0)


def test_label_margin_is_gold_minus_best_other():
    logits = torch.tensor([[1.0, 3.5, -2.0], [4.0, 0.5, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(label_margin(logits, 1), torch.tensor([2.5, -3.5], dtype=torch.float64))
    torch.testing.assert_close(label_margin(logits[1], 0), torch.tensor(3.5, dtype=torch.float64))
    # positive exactly when the argmax over label words is the gold label
    for gold in range(3):
        assert ((label_margin(logits, gold) > 0) == (logits.argmax(-1) == gold)).all()


def test_icl_patch_effect_is_the_first_order_taylor_term():
    """For a margin that is linear in z the first-order term is the exact change."""
    w = torch.randn(3, 4, dtype=torch.float64)  # m(z) = Σ w ⊙ z: gradient w
    z, z_query = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    per_head = icl_patch_effect(w, z_query, z)
    exact = ((w * z_query).sum(-1) - (w * z).sum(-1))  # m with head h switched to z_query
    torch.testing.assert_close(per_head, exact, atol=1e-12, rtol=0)


def test_ft_patch_effect_reverts_each_kv_head_to_first_order():
    grad = torch.randn(2, 3, 5, dtype=torch.float64)
    delta = torch.randn(2, 3, 5, dtype=torch.float64)
    expected = torch.stack([-(grad[h] * delta[h]).sum() for h in range(2)])
    torch.testing.assert_close(ft_patch_effect(grad, delta), expected, atol=1e-12, rtol=0)
    bias_grad, bias_delta = grad[..., 0], delta[..., 0]  # a bias has no input axis
    torch.testing.assert_close(ft_patch_effect(bias_grad, bias_delta),
                               -(bias_grad * bias_delta).sum(-1), atol=1e-12, rtol=0)


def test_delta_w_ft_is_after_minus_before():
    before = torch.randn(4, 3, dtype=torch.float64)
    step = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(delta_w_ft(before - 0.1 * step, before), -0.1 * step,
                               atol=1e-15, rtol=0)


def test_dual_form_from_a_prefix_sum_equals_the_full_assembly():
    """ΔW_ICL and W_ZSL are sums over positions: a cached prefix's sums plus the later positions'
    vectors give the same matrices as every position at once (the query-batch path)."""
    from dualform.core.dual_form import demo_mask, dual_form_from_vectors, split_meta_gradient

    layers, pos, kv, heads, d, n_prefix = 2, 9, 2, 4, 5, 6
    keys, values = (torch.randn(layers, pos, kv, d, dtype=torch.float64) for _ in range(2))
    q = torch.randn(layers, heads, d, dtype=torch.float64)
    is_demo = demo_mask(pos, 4, demo_start=1)  # BOS, 4 demo tokens, then prefix + query tokens
    full = dual_form_from_vectors(keys, values, q, None, is_demo, (0, 1))
    k_pre, v_pre = (t[:, :n_prefix].transpose(1, 2) for t in (keys, values))
    sums = split_meta_gradient(k_pre, v_pre, is_demo[:n_prefix])
    part = dual_form_from_vectors(keys[:, n_prefix:], values[:, n_prefix:], q, None, is_demo, (0, 1),
                                  prefix_sums=sums)
    torch.testing.assert_close(part.delta_w_icl, full.delta_w_icl, atol=1e-12, rtol=0)
    torch.testing.assert_close(part.w_zsl, full.w_zsl, atol=1e-12, rtol=0)
    torch.testing.assert_close(part.icl_update(), full.icl_update(), atol=1e-12, rtol=0)
    assert part.demo_slice == full.demo_slice == slice(1, 5)
