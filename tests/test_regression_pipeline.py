"""Tests for dualform.experiments.vonoswald: baselines, metrics, training, dual-form bridge, experiment."""

from __future__ import annotations

import json

import pytest
import torch

from dualform.core.equations import meta_gradient
from dualform.experiments.vonoswald.baselines import gd_loss, golden_section, tune_gd_eta, tune_gdpp
from dualform.experiments.vonoswald.data import sample_tasks
from dualform.experiments.vonoswald.dual import dual_form_bridge, layer_meta_gradient
from dualform.experiments.vonoswald.experiment import RegressionConfig, run_regression
from dualform.experiments.vonoswald.gd import constructed_lsa, gd_predict, in_context_gradient
from dualform.experiments.vonoswald.lsa import build_lsa
from dualform.experiments.vonoswald.metrics import (
    compare_to_gd,
    gd_predictor,
    implied_linear_model,
    model_cosine,
    ood_losses,
)
from dualform.experiments.vonoswald.train import TrainConfig, train_lsa
from dualform.viz.vonoswald import dual_figure, save_figure, weights_figure

F64 = torch.float64
ATOL = 1e-12


def _tasks(batch=64, n=10, d=10, seed=0, **kw):
    return sample_tasks(batch, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64, **kw)


def test_golden_section_finds_minimum():
    assert golden_section(lambda t: (t - 1.234) ** 2, -3.0, 5.0, iters=60) == pytest.approx(
        1.234, abs=1e-6
    )


def test_gd_line_search_recovers_official_optimum():
    """x ~ U(−0.5, 0.5), d = N = 10, W0 = 0: best η ≈ 6 and 1-step loss ≈ 0.2 (within 10 %)."""
    tune, test = _tasks(batch=4000, seed=10), _tasks(batch=4000, seed=11)
    result = tune_gd_eta(tune, 1, grid=60)
    assert result.eta == pytest.approx(6.0, rel=0.1)
    assert gd_loss(test, result.eta, 1) == pytest.approx(0.2, rel=0.1)
    for eta in (0.5 * result.eta, 1.5 * result.eta):
        assert gd_loss(tune, eta, 1) > result.tune_loss


def test_gd_line_search_paper_input_range():
    """x ~ U(−1, 1): best η ≈ 1.5, loss ≈ 0.82 (within 10 %)."""
    tune, test = _tasks(batch=4000, seed=12, x_range=1.0), _tasks(batch=4000, seed=13, x_range=1.0)
    result = tune_gd_eta(tune, 1, grid=60)
    assert result.eta == pytest.approx(1.5, rel=0.1)
    assert gd_loss(test, result.eta, 1) == pytest.approx(0.82, rel=0.1)


def test_gdpp_training_beats_gd_with_two_steps():
    tune = _tasks(batch=1000, seed=14)
    gd = tune_gd_eta(tune, 2, grid=30)
    gdpp = tune_gdpp(tune, 2, gd.eta, train_steps=100, batch_size=256, lr=0.05, eval_every=20)
    assert gdpp.tune_loss < 0.95 * gd.tune_loss
    assert len(gdpp.etas) == 2 and gdpp.gammas[0] > 0  # a positive curvature correction


@pytest.mark.parametrize("use_w0", [False, True])
def test_implied_model_of_construction_is_gd_weights(use_w0):
    b = _tasks(seed=5)
    w0 = torch.randn(10, dtype=F64) if use_w0 else None
    model = constructed_lsa(10, 10, [3.0, 3.0], w0=w0)
    _, w_gd = gd_predict(b.x, b.y, b.x_test, 3.0, 2, w0)
    jac = implied_linear_model(model.predict, b.tokens(w0), w0)
    assert (jac - w_gd).abs().max() < ATOL


def test_compare_to_gd_is_perfect_for_construction_and_not_for_random():
    b = _tasks(seed=6)
    exact = compare_to_gd(constructed_lsa(10, 10, [4.0]), b, 4.0, 1)
    assert exact["model_cos"] == pytest.approx(1.0, abs=1e-6)  # official +1e-8 in the norms
    assert exact["model_diff"] < ATOL and exact["preds_diff"] < ATOL
    assert exact["loss_tf"] == pytest.approx(exact["loss_gd"], abs=ATOL)
    torch.manual_seed(0)
    random = compare_to_gd(build_lsa(10, 1, init_scale=1.0).double(), b, 4.0, 1)
    assert random["model_cos"] < 0.9 and random["model_diff"] > 0.1
    a = torch.randn(5, 3, dtype=F64)
    assert model_cosine(a, 2 * a).item() == pytest.approx(1.0) and model_cosine(
        a, -a
    ).item() == pytest.approx(-1.0)


def test_ood_losses_construction_matches_gd_and_grows_with_range():
    alphas = [0.5, 1.0, 2.0]
    model = constructed_lsa(10, 10, [6.0])
    curves = ood_losses(
        {"lsa": model.predict, "gd": gd_predictor(6.0, 1)},
        alphas,
        n=10,
        d=10,
        x_range=0.5,
        batch_size=2000,
        dtype=F64,
    )
    assert curves["lsa"] == pytest.approx(curves["gd"], abs=1e-12)
    assert curves["gd"][0] < curves["gd"][1] < curves["gd"][2]


def test_training_is_seeded_vectorised_and_reduces_loss():
    cfg = TrainConfig(n_layers=2, steps=60, batch_size=128, log_every=20, lr=1e-2)
    first, second = train_lsa(cfg, progress=False), train_lsa(cfg, progress=False)
    assert first.log_losses == second.log_losses
    for p, q in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert first.log_steps == [20, 40, 60]
    assert first.log_losses[-1] < first.log_losses[0]


def test_softmax_mlp_variant_trains():
    cfg = TrainConfig(
        n_layers=1, steps=30, batch_size=64, log_every=10, attn="softmax", mlp=True, lr=1e-2
    )
    run = train_lsa(cfg, progress=False)
    assert run.model.blocks[0].mlp is not None and run.model.cfg.attn == "softmax"
    assert all(torch.isfinite(torch.tensor(run.log_losses)))


def test_layer_meta_gradient_is_sum_of_outer_products():
    k, v = torch.randn(2, 6, 3, 4, dtype=F64), torch.randn(2, 6, 3, 4, dtype=F64)
    expected = sum(
        torch.einsum("bhi,bhj->bhij", v[:, j], k[:, j]) for j in range(5)
    )  # not the query
    got = layer_meta_gradient(k, v)
    assert (got - expected).abs().max() < ATOL
    assert torch.equal(got[:, 1], meta_gradient(v[:, :5, 1], k[:, :5, 1]))


def test_dual_form_bridge_on_gd_construction_equals_gd_update():
    b, eta = _tasks(batch=32, seed=7), 2.0
    w0 = torch.randn(10, dtype=F64)
    out = dual_form_bridge(constructed_lsa(10, 10, [eta] * 3, w0=w0), b, eta=eta, w0=w0)
    assert max(out["z_error"]) < ATOL and max(out["update_error"]) < ATOL
    assert len(out["gd_step_error"]) == 3 and max(out["gd_step_error"]) < ATOL
    w1 = w0 - eta * in_context_gradient(w0.expand(32, 10), b.x, b.y)
    assert (out["implied_model"] - w1).abs().max() < ATOL


def test_dual_form_bridge_on_random_multihead_lsa_is_exact():
    torch.manual_seed(3)
    b = _tasks(batch=16, seed=8)
    deep = dual_form_bridge(build_lsa(10, 2, n_heads=2, d_head=5, init_scale=1.0).double(), b)
    assert max(deep["z_error"]) < ATOL and max(deep["update_error"]) < ATOL
    shallow = dual_form_bridge(build_lsa(10, 1, n_heads=3, init_scale=1.0).double(), b)
    assert shallow["jacobian_error"] < ATOL  # dual-form model = autograd ∂ŷ/∂x_test


def test_figures_build_and_save(tmp_path):
    b = _tasks(batch=8)
    model = constructed_lsa(10, 10, [6.0])
    built = dual_form_bridge(model, b, eta=6.0)
    _, w1 = gd_predict(b.x, b.y, b.x_test, 6.0, 1)
    fig = dual_figure(built, built, w1)
    assert len(fig.data) == 5
    wfig = weights_figure(model, 6.0, 10)
    assert torch.allclose(torch.tensor(wfig.data[0].z), torch.tensor(wfig.data[2].z))
    record = save_figure(wfig, tmp_path, "weights")
    assert (tmp_path / "weights.html").exists()
    assert (tmp_path / "weights.png").exists() if record["png"] else record["png_error"]


def test_run_regression_tiny(tmp_path):
    cfg = RegressionConfig(
        layers=(1, 2),
        train_steps=(20, 20),
        batch_size=64,
        eval_batch=300,
        tune_batch=300,
        gd_grid=20,
        gdpp_train_steps=5,
        gdpp_batch=64,
        ood_alphas=(0.5, 1.0, 2.0),
        ood_batch=100,
        softmax_variant=True,
        softmax_steps=5,
        png=False,
    )
    results = run_regression(tmp_path, config=cfg, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table"] == results["table"] and [r["steps"] for r in saved["table"]] == [1, 2]
    assert not list(tmp_path.glob(".results-*"))  # atomic write left no temp file
    row = saved["table"][0]
    for key in ("gd", "gdpp", "lsa", "paper", "model_cos", "model_diff", "preds_diff", "gd_eta"):
        assert row[key] is not None
    assert saved["dual_form"]["gd_construction_1step"]["update_error"][0] < 1e-10
    assert set(saved["targets"]) >= {"gd_1step_loss", "gd_1step_eta", "lsa_1layer_model_cos"}
    assert len(saved["ood"]["curves"]["GD 1 step"]) == 3
    assert saved["softmax_mlp"]["test_loss"] > 0
    for fig in saved["figures"].values():
        assert (tmp_path / fig["html"]).exists()
