"""``dualform bench`` runs end to end on a tiny model and reports every ratio the issues ask for
(no wall-clock limits here: the figures themselves are measured on the real model)."""

import json

from typer.testing import CliRunner

from dualform.cli import app


def test_bench_reports_every_ratio_as_json(single_thread):
    result = CliRunner().invoke(app, ["bench", "--model", "tiny-llama", "--repeats", "1", "--json"])
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
