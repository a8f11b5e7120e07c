"""Plotly figures and offline circuitsvis views (tiny model; synthetic results in the real schema)."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from dualform import dual_form, finetune_kv, load_model, load_task, prompt_tokens, sample_demos
from dualform.experiments.dai.attention import AttentionExample, attention_example
from dualform.experiments.dai.conditions import demo_training_texts
from dualform.tasks.prompts import build_prompt
from dualform.viz.figures import (
    attention_views,
    attention_views_html,
    circuitsvis_library,
    demo_attention_figure,
    figures_from_results,
    spectrum_figure,
)

N_LAYERS, N_HEADS = 2, 4
PER_TASK = {"simaou_layers", "simam_layers", "simam_delta_layers", "kendall_layers", "cos_layers",
            "heads_simaou_z", "heads_simam", "heads_attribution", "heads_norms", "heads_cos"}


def _summary(rng, heads: bool = True, signed: bool = True) -> dict:
    per_head = rng.uniform(-1 if signed else 0, 1, (N_LAYERS, N_HEADS))
    out = {"mean": float(per_head.mean()), "per_layer": per_head.mean(1).tolist()}
    if heads:
        out["per_head"] = per_head.tolist()
    return out


def _metrics(rng, attribution: bool = True) -> dict:
    out = {
        "accuracy": {"zsl": 50.0, "icl": 75.0, "ft": 62.5}, "rec2ftp": 80.0, "n_f2t": 2,
        "simaou": {"normalized": _summary(rng, False), "unnormalized": _summary(rng, False),
                   "random": _summary(rng, False), "per_head_z": _summary(rng)},
        "simam": {k: _summary(rng) for k in ("before", "after", "delta")},
        "kendall": {"value": _summary(rng, False), "random": _summary(rng, False)},
        "dual_form": {"norm_delta_w_icl": rng.uniform(1, 2, (N_LAYERS, N_HEADS)).tolist(),
                      "norm_w_zsl": rng.uniform(1, 2, (N_LAYERS, N_HEADS)).tolist(),
                      "cos_icl_update_ft": _summary(rng)},
        "ft_diverged": False,
    }
    if attribution:
        out["attribution"] = {"icl": rng.normal(size=(N_LAYERS, N_HEADS)).tolist(),
                              "ft": rng.normal(size=(N_LAYERS, N_HEADS)).tolist(),
                              "spearman": 0.4, "kendall": 0.3}
    return out


def fake_results(tasks=("afinn-sentiment",), model: str = "tiny-llama", seed: int = 0) -> dict:
    """A ``results.json`` of ``reproduce dai`` with random numbers, in the real schema."""
    rng = np.random.default_rng(seed)
    config = {"model": model, "tasks": list(tasks), "shots": 4, "n_validation": 4, "n_test": 4,
              "demo_seeds": [1], "lr_grid": [0.1], "layer_causal": False,
              "untrained_baseline": True, "attribution": True, "device": "cpu", "seed": 0}
    out = {"config": config, "versions": {"dualform": "0.1.0"}, "tasks": {}}
    for name in tasks:
        task = {"task": name, "template": "Word: {x} Sentiment: {y}", "shots": 4, "n_test": 4,
                "selection": {"demo_seed": 1, "lr": 0.1, "demo_seed_val_acc": {"1": 50.0},
                              "lr_val_acc": {"0.1": 50.0}},
                **_metrics(rng), "untrained": _metrics(rng, attribution=False),
                "timing_s": {"finetune": 1.0}}
        task["simam"]["delta"]["per_head"][0][1] = None  # not finite → null in strict JSON
        out["tasks"][name] = task
    return out


def test_figures_from_results_has_every_figure():
    results = fake_results(("afinn-sentiment", "vader-valence"))
    figs = figures_from_results(results)
    expected = {"accuracy", "overview"} | {f"{t}/{k}" for t in results["tasks"] for k in PER_TASK}
    assert set(figs) == expected
    assert all(isinstance(f, go.Figure) and f.data for f in figs.values())
    accuracy = {tr.name: list(tr.y) for tr in figs["accuracy"].data}
    assert accuracy == {"ZSL": [50.0, 50.0], "ICL": [75.0, 75.0], "FT": [62.5, 62.5]}


def test_heatmaps_hold_the_values_and_name_layer_head_value():
    results = fake_results()
    t = results["tasks"]["afinn-sentiment"]
    figs = figures_from_results(results)
    heat = figs["afinn-sentiment/heads_cos"].data[0]
    np.testing.assert_allclose(heat.z, t["dual_form"]["cos_icl_update_ft"]["per_head"])
    assert heat.z.shape == (N_LAYERS, N_HEADS)
    for key in (k for k in figs if "/heads_" in k):
        for trace in figs[key].data:
            assert all(w in trace.hovertemplate for w in ("layer %{y}", "head %{x}", "value %{z"))
    simam = figs["afinn-sentiment/heads_simam"]
    assert [tr.name for tr in simam.data] == ["before", "after", "Δ"]
    assert np.isnan(simam.data[2].z[0, 1])  # the null entry is a gap, not a crash
    attr = figs["afinn-sentiment/heads_attribution"]
    assert attr.data[0].coloraxis != attr.data[1].coloraxis  # ICL and FT on their own scales
    assert "0.40" in attr.layout.title.text  # Spearman ρ in the title


def test_layer_lines_have_baselines_and_head_bands():
    results = fake_results()
    t = results["tasks"]["afinn-sentiment"]
    fig = figures_from_results(results)["afinn-sentiment/simam_delta_layers"]
    by_name = {tr.name: tr for tr in fig.data}
    assert by_name["SimAM_Δ"].line.dash == "solid"
    np.testing.assert_allclose(by_name["SimAM_Δ"].y, t["simam"]["delta"]["per_layer"])
    untrained = by_name["untrained: SimAM_Δ"]
    assert untrained.line.dash == "dash" and untrained.line.color == by_name["SimAM_Δ"].line.color
    np.testing.assert_allclose(untrained.y, t["untrained"]["simam"]["delta"]["per_layer"])
    band = by_name["SimAM_Δ: range over heads"]
    per_head = np.array(t["simam"]["delta"]["per_head"], dtype=float)
    high, low = np.nanmax(per_head, 1), np.nanmin(per_head, 1)
    np.testing.assert_allclose(band.y, np.concatenate([high, low[::-1]]))
    kendall = figures_from_results(results)["afinn-sentiment/kendall_layers"]
    assert {tr.name: tr.line.dash for tr in kendall.data}["random"] == "dot"
    assert "layer %{x}" in by_name["SimAM_Δ"].hovertemplate


def test_missing_parts_are_left_out():
    results = fake_results()
    t = results["tasks"]["afinn-sentiment"]
    del t["attribution"], t["untrained"], t["kendall"]
    figs = figures_from_results(results)
    assert "afinn-sentiment/heads_attribution" not in figs
    assert "afinn-sentiment/kendall_layers" not in figs
    names = [tr.name for tr in figs["afinn-sentiment/simam_layers"].data]
    assert not any(n.startswith("untrained") for n in names)


@pytest.fixture(scope="module")
def tiny():
    model = load_model("tiny-llama")
    task = load_task("afinn-sentiment", n_validation=4, n_test=4)
    demos = sample_demos(task, k=3, seed=1)
    ft = finetune_kv(model, demo_training_texts(model, task, demos), lr=0.1)
    return model, task, demos, ft


def test_spectrum_compares_delta_w_icl_with_the_ft_update(tiny):
    model, task, demos, ft = tiny
    pt = prompt_tokens(model, build_prompt(task, demos, task.test[0]))
    dual = dual_form(model, pt.tokens, pt.n_demo_tokens, demo_start=pt.demo_start)
    layer, head = 1, 3
    fig = spectrum_figure(dual, ft, layer, head)
    traces = {tr.name.split(" (eff")[0]: tr for tr in fig.data}
    assert set(traces) == {"ΔW_ICL", "ΔW_V (FT)", "ΔW_K (FT)"}
    d_head = dual.delta_w_icl.shape[-1]
    sigma = torch.linalg.svdvals(dual.delta_w_icl[layer, head].double()).numpy()
    np.testing.assert_allclose(traces["ΔW_ICL"].customdata, sigma, rtol=1e-6)
    kv = head // (dual.delta_w_icl.shape[1] // ft.n_kv_heads)
    sigma_v = torch.linalg.svdvals(ft.per_head("v")[layer, kv].double()).numpy()
    np.testing.assert_allclose(traces["ΔW_V (FT)"].customdata, sigma_v, rtol=1e-6)
    assert all(len(tr.y) == d_head and tr.y[0] == pytest.approx(1.0) for tr in fig.data)
    assert fig.layout.yaxis.type == "log" and "layer 1, head 3" in traces["ΔW_ICL"].hovertemplate
    with pytest.raises(ValueError, match="Head 99"):
        spectrum_figure(dual, ft, layer, 99)


def test_attention_example_aligns_zsl_and_ft_on_the_query_tokens(tiny):
    model, task, demos, ft = tiny
    ex = attention_example(model, task, demos, task.test[0], ft=ft)
    icl = np.array(ex.last_row["icl"])
    np.testing.assert_allclose(icl.sum(-1), 1.0, atol=1e-3)  # softmax rows
    shift = ex.ft_shift()  # the default layer: where FT moved the attention most
    assert shift[ex.view_layer] >= shift.max() - 1e-3 and shift.max() > 0
    for cond in ("zsl", "ft"):
        aligned = ex.aligned_last_row(cond, 0)
        assert np.isnan(aligned[:, ex.demo_slice]).all()  # no demonstrations in its prompt
        np.testing.assert_allclose(aligned[:, ex.demo_slice.stop:],
                                   np.array(ex.last_row[cond])[0][:, ex.demo_start:])
    assert ex.tokens["icl"][ex.demo_slice.stop:] == ex.tokens["zsl"][ex.demo_start:]
    assert not np.allclose(ex.last_row["zsl"], ex.last_row["ft"])  # FT moved the pattern
    fig = demo_attention_figure(ex)
    assert [tr.name.split(":")[0] for tr in fig.data] == ["ICL", "ZSL", "FT"]
    np.testing.assert_allclose(fig.data[0].y, icl[ex.view_layer].mean(0), atol=1e-6)  # BOS too
    matches = {fig.layout[ax.replace("y", "yaxis")].matches for ax in {tr.yaxis for tr in fig.data}}
    assert len(matches - {None}) == 1  # one shared attention axis for ICL, ZSL and FT
    assert "position %{x}" in fig.data[0].hovertemplate
    again = AttentionExample.from_dict(json.loads(json.dumps(ex.to_dict())))
    assert again == ex


def test_circuitsvis_views_embed_the_bundle_not_the_cdn(tiny):
    model, task, demos, ft = tiny
    ex = attention_example(model, task, demos, task.test[0], ft=ft)
    bundle = circuitsvis_library()
    page = attention_views_html(ex)
    assert page.count(bundle) == 1 and "var CircuitsVis" in bundle
    assert circuitsvis_library() not in attention_views_html(ex, library=False)
    for text in (page, attention_views(ex)._repr_html_()):
        assert "unpkg.com" not in text and "<script src" not in text
        assert text.count("CircuitsVis.AttentionPatterns") == 3  # ICL, ZSL, FT
    assert "</script" not in bundle  # safe to inline
