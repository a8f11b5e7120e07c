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
    assert out["seed_grid"]["speedup"] > 0 and out["seed_grid"]["seeds"] == 3
    shared = out["shared_prefix"]  # tiny-llama takes the shared-prefix attention
    assert shared["available"] and shared["speedup"] > 0 and shared["queries"] == 64
    from dualform.viz.terminal import bench_rows

    rows = dict(bench_rows(out))
    label = next(k for k in rows if "copied / shared prefix cache" in k)
    assert rows[label].startswith(f"{shared['speedup']:.2f}x")


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


def test_end_to_end_times_each_run_keeps_results_and_never_times_a_resumed_run(tmp_path, single_thread):
    import pytest

    from dualform.errors import InvalidArgumentError
    from dualform.experiments.dai.config import DaiConfig
    from dualform.infra.bench import bench_end_to_end

    cfg = DaiConfig(model="tiny-llama", tasks=("afinn-sentiment",), shots=4, n_validation=4,
                    n_test=4, seeds=1, demo_seeds=(1,), lr_grid=(0.1,), attribution=False)
    out = bench_end_to_end("tiny-llama", config=cfg, small=cfg, many_seeds=2, keep=tmp_path)
    assert out["default"]["seeds"] == 1 and out["many_seeds"]["seeds"] == 2
    assert out["default"]["total_s"] > 0 and out["default"]["peak_rss_MiB"] > 0
    assert {"naive", "shared", "speedup"} <= set(out["seed_sharing"]) and out["reuse"]["speedup"] > 0
    assert out["cpu_matmul"]["speedup"] > 0  # default linears vs oneDNN, the same task
    saved = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("default", "seeds-2")]
    assert [len(s["tasks"]["afinn-sentiment"]["seeds"]) for s in saved] == [1, 2]
    with pytest.raises(InvalidArgumentError, match="already holds results"):
        bench_end_to_end("tiny-llama", config=cfg, small=cfg, keep=tmp_path)


def test_cpu_matmul_rows_time_both_paths_and_restore_the_setting(single_thread):
    import os

    from dualform.infra.bench import bench_cpu_matmul
    from dualform.models.cpu_matmul import BACKEND_ENV, onednn_available
    from dualform.models.load import load_model
    from dualform.viz.terminal import bench_rows

    before = os.environ.get(BACKEND_ENV)
    out = bench_cpu_matmul(load_model("tiny-llama"), repeats=2, n_rows=2, n_tokens=6)
    assert os.environ.get(BACKEND_ENV) == before
    assert out["available"] == onednn_available()
    if not out["available"]:
        return
    assert out["linear_speedup"] > 0 and out["forward"]["speedup"] > 0 and out["grid"]["speedup"] > 0
    one = {"tokens": 1, "capture_ratio": 1, "capture_s": 1, "bare_forward_s": 1,
           "run_with_cache_ratio": 1, "captured_MiB": 1, "dual_form_ratio": 1, "dual_form_s": 1,
           "result_MiB": 1, "finetune_step_ratio": 1, "finetune_step_s": 1, "forward_backward_s": 1,
           "seeds": 1, "rates": 1, "speedup": 1, "per_seed_grids_s": 1, "one_batch_s": 1}
    result = {"second_load_s": 1, "capture": one, "dual_form": one, "finetune": one,
              "prefix_reuse": {}, "seed_grid": one, "cpu_matmul": out, "peak_rss_MiB": 1}
    labels = [label for label, _ in bench_rows(result)]
    assert sum("oneDNN" in label for label in labels) == 3
