"""``dualform bench`` runs end to end on a tiny model and reports every ratio the issues ask for
(no wall-clock limits here: the figures themselves are measured on the real model)."""

import json

from typer.testing import CliRunner

from dualform.cli import app


def test_bench_reports_every_ratio_as_json(single_thread):
    result = CliRunner().invoke(app, ["bench", "--model", "tiny-llama", "--repeats", "1", "--json",
                                      "--no-pythia-shape"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    assert out["model"] == "tiny-llama" and out["dtype"] == "float32"
    for section, key in [("capture", "capture_ratio"), ("dual_form", "dual_form_ratio"),
                         ("finetune", "finetune_step_ratio")]:
        assert out[section][key] > 0
    assert set(out["prefix_reuse"]) == {"8", "16", "32"}
    shots = out["prefix_reuse"]
    assert shots["8"]["prompt_tokens"] < shots["16"]["prompt_tokens"] < shots["32"]["prompt_tokens"]
    assert all(s["speedup"] > 0 for s in shots.values())


def test_pythia_shaped_bench_measures_capture_and_dual_form(single_thread):
    """The Pythia-160M-shaped measurement, on a smaller model of the same family and features."""
    from dualform.infra.bench import bench_pythia_shape, pythia_shaped_model
    from dualform.models.features import attention_features

    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 128, "vocab_size": 600}
    features = attention_features(pythia_shaped_model(**small))
    assert features.rotary_fraction == 0.25 and features.fused_layout == "grouped"
    out = bench_pythia_shape(1, **small)
    assert out["capture"]["capture_ratio"] > 0 and out["dual_form"]["dual_form_ratio"] > 0
    assert out["shape"]["rotary_pct"] == 0.25
