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
from dualform.experiments.dai.metric_names import (
    ACCURACY,
    COS_ICL_FT,
    KENDALL,
    REC2FTP,
    SIMAM_AFTER,
    SIMAM_DELTA,
    SIMAOU,
    f2t,
)
from dualform.experiments.dai.pooling import pool_task, pooled_attribution
from dualform.experiments.dai.protocol import pool_tasks
from dualform.experiments.dai.results import (
    SCHEMA_VERSION,
    DaiResults,
    SchemaVersionError,
    SeedResult,
    Selection,
    Summary,
    TaskResult,
    metric_set,
)
from dualform.infra.io import as_stored
from dualform.tasks.prompts import build_prompt
from dualform.viz.figures import (
    attention_views,
    attention_views_html,
    circuitsvis_library,
    demo_attention_figure,
    figures_from_results,
    spectrum_figure,
)
from dualform.viz.tables import dai_markdown, dai_rows

N_LAYERS, N_HEADS, N_EXAMPLES, N_SEEDS = 2, 4, 6, 2
PER_TASK = {"simaou_layers", "simam_layers", "simam_delta_layers", "kendall_layers", "cos_layers",
            "heads_simaou_z", "heads_simam", "heads_attribution", "heads_norms", "heads_cos"}


def _metrics(rng, shift: float = 0.0) -> dict:
    """Scoring's output for one seed, from random unreduced values (the real Summary path)."""
    def layers():
        return Summary.of(rng.uniform(-1, 1, (N_EXAMPLES, N_LAYERS)) + shift)

    def heads():
        return Summary.of(rng.uniform(-1, 1, (N_EXAMPLES, N_LAYERS, N_HEADS)) + shift)

    correct = {c: rng.random(N_EXAMPLES) < p for c, p in (("zsl", 0.5), ("icl", 0.75), ("ft", 0.6))}
    fixed = correct["ft"] & ~correct["zsl"]
    both = fixed & correct["icl"]  # f2t: a subset of the examples
    f2t = {"f2t": {"simaou": {"normalized": Summary.of(rng.uniform(-1, 1, (int(both.sum()), N_LAYERS)))},
                   "simam": {"after": Summary.of(rng.uniform(-1, 1, (int(both.sum()), N_LAYERS, N_HEADS)))}}
           } if both.any() else {}
    return f2t | {
        "accuracy": {c: Summary.scalar(100.0 * v.mean(), 100.0 * v) for c, v in correct.items()},
        "rec2ftp": Summary.scalar(100.0 * correct["icl"][fixed].mean() if fixed.any() else float("nan"),
                                  100.0 * correct["icl"][fixed]),
        "n_f2t": int(both.sum()),
        "simaou": {"normalized": layers(), "unnormalized": layers(), "random": layers(),
                   "per_head_z": heads()},
        "simam": {k: heads() for k in ("before", "after", "delta")},
        "kendall": {"value": layers(), "random": layers()},
        "dual_form": {"norm_delta_w_icl": rng.uniform(1, 2, (N_LAYERS, N_HEADS)).tolist(),
                      "norm_w_zsl": rng.uniform(1, 2, (N_LAYERS, N_HEADS)).tolist(),
                      "cos_icl_update_ft": heads()},
    }


def _seed(rng, replicate: int, shift: float = 0.0) -> SeedResult:
    scored = _metrics(rng, shift)
    selection = Selection(1 + 1000 * replicate, 0.1, {"1": 50.0}, {"0.1": 50.0})
    return SeedResult(replicate, selection, metric_set(scored), scored["n_f2t"], False,
                      scored["dual_form"]["norm_delta_w_icl"], scored["dual_form"]["norm_w_zsl"])


def fake_results(tasks=("afinn-sentiment",), model: str = "tiny-llama", seed: int = 0) -> DaiResults:
    """Results of ``reproduce dai`` with random numbers, built and pooled by the real schema and
    pooling code, then read back from its JSON (as every reader sees it)."""
    rng = np.random.default_rng(seed)
    config = {"model": model, "tasks": list(tasks), "shots": 4, "n_validation": 4, "n_test": 4,
              "seeds": N_SEEDS, "demo_seeds": [1], "lr_grid": [0.1], "layer_causal": False,
              "untrained_baseline": True, "attribution": True, "device": "cpu", "seed": 0}
    results = DaiResults(config, {"dualform": "0.1.0"})
    for name in tasks:
        task = TaskResult(name, "Word: {x} Sentiment: {y}", ["Negative", "Positive"], 4, N_EXAMPLES,
                          N_EXAMPLES, [_seed(rng, r, 0.2) for r in range(N_SEEDS)],
                          [_seed(rng, r) for r in range(N_SEEDS)], timing_s={"finetune": 1.0})
        task.seeds[0].metrics[SIMAM_DELTA].values[:, 0, 1] = np.nan  # not finite → null in JSON
        task.seeds[0].metrics[SIMAM_DELTA].per_head[0][1] = None
        effects = [rng.normal(0.3, 1.0, (N_EXAMPLES, N_LAYERS, N_HEADS)) for _ in range(N_SEEDS)]
        task.attribution = pooled_attribution(effects, [e[:3] for e in effects])
        results.tasks[name] = pool_task(task)
    pool_tasks(results)
    return DaiResults.from_json(as_stored(results.to_json()))


def test_figures_from_results_has_every_figure():
    results = fake_results(("afinn-sentiment", "vader-valence"))
    figs = figures_from_results(results)
    expected = {"accuracy", "overview"} | {f"{t}/{k}" for t in results.tasks for k in PER_TASK}
    assert set(figs) == expected
    assert all(isinstance(f, go.Figure) and f.data for f in figs.values())
    accuracy = {tr.name: tr for tr in figs["accuracy"].data}
    assert set(accuracy) == {"ZSL", "ICL", "FT"}
    icl = results.tasks["vader-valence"].intervals.get(ACCURACY["icl"])
    assert accuracy["ICL"].y[1] == pytest.approx(icl.mean)  # error bars = the interval
    assert accuracy["ICL"].error_y.array[1] == pytest.approx(icl.high - icl.mean)
    assert accuracy["ICL"].error_y.arrayminus[1] == pytest.approx(icl.mean - icl.low)


def test_heatmaps_hold_the_values_and_mark_distinct_heads():
    results = fake_results()
    t = results.tasks["afinn-sentiment"]
    figs = figures_from_results(results)
    heat = figs["afinn-sentiment/heads_cos"].data[0]
    np.testing.assert_allclose(heat.z, t.per_head_mean(COS_ICL_FT))
    assert heat.z.shape == (N_LAYERS, N_HEADS)
    for key in (k for k in figs if "/heads_" in k):
        for trace in figs[key].data:
            if trace.type == "heatmap":
                assert all(w in trace.hovertemplate for w in ("layer %{y}", "head %{x}", "value %{z"))
    simam = figs["afinn-sentiment/heads_simam"]
    assert [tr.name for tr in simam.data if tr.type == "heatmap"] == ["before", "after", "Δ"]
    attr = figs["afinn-sentiment/heads_attribution"]
    maps = [tr for tr in attr.data if tr.type == "heatmap"]
    assert maps[0].coloraxis != maps[1].coloraxis  # ICL and FT on their own scales
    assert f"{t.attribution.spearman:.2f}" in attr.layout.title.text  # Spearman ρ in the title
    marks = [tr for tr in attr.data if tr.type == "scatter"]
    distinct = np.array(t.attribution.icl_distinct)
    assert distinct.any()  # effects drawn around 0.3 ± 1 over 12 examples
    layers, heads = np.nonzero(distinct)
    assert sorted(zip(marks[0].y, marks[0].x, strict=True)) == sorted(zip(layers, heads, strict=True))


def test_layer_lines_have_baselines_and_interval_bands():
    results = fake_results()
    t = results.tasks["afinn-sentiment"]
    fig = figures_from_results(results)["afinn-sentiment/simam_delta_layers"]
    by_name = {tr.name: tr for tr in fig.data}
    assert by_name["SimAM_Δ"].line.dash == "solid"
    layer_intervals = t.intervals.per_layer[SIMAM_DELTA]
    np.testing.assert_allclose(by_name["SimAM_Δ"].y, [i.mean for i in layer_intervals])
    untrained = by_name["untrained: SimAM_Δ"]
    assert untrained.line.dash == "dash" and untrained.line.color == by_name["SimAM_Δ"].line.color
    np.testing.assert_allclose(untrained.y, t.per_layer_mean(SIMAM_DELTA, untrained=True))
    band = by_name["SimAM_Δ: 95 % interval"]
    low, high = [i.low for i in layer_intervals], [i.high for i in layer_intervals]
    np.testing.assert_allclose(band.y, np.concatenate([high, low[::-1]]))
    assert all(i.low <= i.mean <= i.high for i in layer_intervals)
    kendall = figures_from_results(results)["afinn-sentiment/kendall_layers"]
    assert {tr.name: tr.line.dash for tr in kendall.data}["random"] == "dot"
    assert "layer %{x}" in by_name["SimAM_Δ"].hovertemplate


def test_missing_parts_are_left_out():
    results = fake_results()
    t = results.tasks["afinn-sentiment"]
    t.attribution, t.untrained = None, []
    for s in t.seeds:
        del s.metrics[KENDALL]
    t.intervals.per_layer.pop(KENDALL)
    figs = figures_from_results(results)
    assert "afinn-sentiment/heads_attribution" not in figs
    assert "afinn-sentiment/kendall_layers" not in figs
    names = [tr.name for tr in figs["afinn-sentiment/simam_layers"].data]
    assert not any(n.startswith("untrained") for n in names)


def test_results_round_trip_and_refuse_another_schema_version(tmp_path):
    results = fake_results()
    path = results.save(tmp_path / "results.json")
    again = DaiResults.load(tmp_path)
    assert as_stored(again.to_json()) == as_stored(results.to_json())
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError) as err:
        DaiResults.load(path)
    message = str(err.value)
    assert str(path) in message and "version 1" in message and f"version {SCHEMA_VERSION}" in message
    assert "Rerun" in message


def test_table_cells_are_intervals_and_small_ratios_are_flagged():
    results = fake_results(("afinn-sentiment", "vader-valence"))
    rows = dict(dai_rows(results))
    t = results.tasks["afinn-sentiment"]
    simaou = t.intervals.get(SIMAOU)
    cell = rows["afinn-sentiment (tiny-llama)"][SIMAOU]
    assert cell == f"{simaou.mean:.3f} [{simaou.low:.3f}, {simaou.high:.3f}]"
    rec = rows["afinn-sentiment (tiny-llama)"][REC2FTP]
    assert rec == "–" or rec.endswith(f"⚠ n={t.intervals.get(REC2FTP).n}")  # 2 × 6 examples < 20
    assert "all tasks, pooled (tiny-llama)" in rows
    markdown = dai_markdown(results)
    assert "SimAOU − random" in markdown and "bootstrap over seeds" in markdown
    assert "bfloat16" not in markdown
    results.config["dtype"] = "bfloat16"  # a half-precision run says what it biases
    assert "forward passes in bfloat16" in dai_markdown(results)


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


def test_pooling_handles_metrics_over_example_subsets_and_seeds_that_lack_one():
    """f2t metrics cover only some examples and a diverged seed has no FT metric: each gets
    intervals from its own examples and seeds (the real 200-example default run had both)."""
    rng = np.random.default_rng(3)
    seeds = [_seed(rng, r) for r in range(3)]
    for n, s in zip((7, 2, 0), seeds, strict=True):  # f2t over 7, 2 and no examples
        s.metrics = {k: v for k, v in s.metrics.items() if not k.startswith("f2t.")}
        if n:
            s.metrics[f2t(SIMAOU)] = Summary.of(rng.uniform(-1, 1, (n, N_LAYERS)))
    del seeds[1].metrics[SIMAOU]  # e.g. its finetuning diverged
    task = pool_task(TaskResult("afinn-sentiment", "{x}", ["a", "b"], 4, N_EXAMPLES, 0, seeds))
    for name in (SIMAOU, f2t(SIMAOU), SIMAM_AFTER):
        bands = task.intervals.per_layer[name]
        assert len(bands) == N_LAYERS and all(b.low <= b.mean <= b.high for b in bands)
    assert task.intervals.per_layer[f2t(SIMAOU)][0].n == 9  # 7 + 2 examples, two seeds
    assert np.array(task.intervals.head_distinct[SIMAM_AFTER]).shape == (N_LAYERS, N_HEADS)


def test_caption_names_the_layers_where_simam_delta_is_undefined():
    """Layers whose SimAM_Δ is nan in every replicate are named in the tables' caption; a layer
    defined in any replicate is not."""
    from dualform.viz.tables import caption, undefined_layers

    results = fake_results(("afinn-sentiment", "vader-valence"))
    assert undefined_layers(results, SIMAM_DELTA) == [] and "SimAM_Δ leaves out" not in caption(results)
    for task in results.tasks.values():
        for seed in task.seeds:
            seed.metrics[SIMAM_DELTA].per_layer[0] = None
    assert undefined_layers(results, SIMAM_DELTA) == [0]
    assert "SimAM_Δ leaves out layer 0:" in caption(results)
    results.tasks["vader-valence"].seeds[1].metrics[SIMAM_DELTA].per_layer[0] = 0.5
    assert undefined_layers(results, SIMAM_DELTA) == []
