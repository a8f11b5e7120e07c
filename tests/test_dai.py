"""The ICL-vs-FT pipeline end to end on a tiny model: complete, strict JSON, resumable."""

import json

import numpy as np
import pytest

from dualform.experiments.dai.config import DaiConfig
from dualform.experiments.dai.metric_names import (
    ACCURACY,
    COS_ICL_FT,
    KENDALL,
    KENDALL_EXAMPLE,
    SIMAM_DELTA,
    SIMAOU,
    SIMAOU_RANDOM,
    TOPK_EXAMPLE,
    TOPK_TOKEN,
)
from dualform.experiments.dai.protocol import run_dai
from dualform.experiments.dai.results import SCHEMA_VERSION, DaiResults, SchemaVersionError
from dualform.infra.io import ResultWriteError, write_json_atomic
from dualform.viz.tables import dai_markdown

CONFIG = DaiConfig(
    model="tiny-llama", tasks=("afinn-sentiment",), shots=4, n_validation=4, n_test=4,
    seeds=2, demo_seeds=(1,), lr_grid=(0.1, 1e6), n_untrained=3,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dai")
    return out, run_dai(out, CONFIG, progress=False)


def test_results_are_complete_and_strict_json(run):
    out, _ = run
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    results = DaiResults.load(out)
    assert results.schema_version == SCHEMA_VERSION
    task = results.tasks["afinn-sentiment"]
    assert [s.replicate for s in task.seeds] == [0, 1]
    assert [s.selection.demo_seed for s in task.seeds] == [1, 1001]  # independent demo sets
    for seed in task.seeds:
        assert seed.selection.lr == 0.1  # the absurd rate diverged and was recorded
        assert seed.selection.lr_val_acc["1000000.0"].startswith("diverged")
        assert {ACCURACY[c] for c in ("zsl", "icl", "ft")} <= set(seed.metrics)
        assert len(seed.metrics[SIMAOU].per_example) == 4  # test examples
    n_layers = 2
    assert len(task.intervals.per_layer[SIMAOU]) == n_layers
    assert len(task.intervals.head_distinct[SIMAM_DELTA][0]) == 4  # heads
    simaou = task.intervals.get(SIMAOU)
    assert simaou.low <= simaou.mean <= simaou.high and simaou.n == 8  # 2 seeds × 4 examples
    assert np.mean([s.metrics[SIMAOU].mean for s in task.seeds]) == pytest.approx(simaou.mean)
    assert len(task.attribution.icl) == n_layers and task.n_attribution == 4
    assert len(task.untrained) == 2 and task.untrained_intervals.get(SIMAOU) != simaou
    assert task.n_untrained == 3 and len(task.untrained[0].metrics[SIMAOU].per_example) == 3
    assert task.differences[f"trained − untrained: {SIMAOU}"].n == 6  # 2 seeds × first 3
    assert f"{SIMAOU} − {SIMAOU_RANDOM}" in task.differences
    assert len(task.seeds[0].norm_delta_w_icl) == n_layers
    assert len(task.seeds[0].metrics[COS_ICL_FT].per_head[0]) == 4
    assert results.config["tasks"] == ["afinn-sentiment"]
    assert results.config["scaled_queries"] and not results.config["keep_separator"]
    assert results.settings["afinn-sentiment"]["shots"] == 4
    assert SIMAOU in results.pooled.overall
    # the metrics of the conventions: example-level Kendall, top-k recall, f2t mode, notes
    seed = task.seeds[0]
    assert len(seed.metrics[KENDALL_EXAMPLE].per_layer) == n_layers
    assert len(seed.metrics[TOPK_TOKEN].per_layer) == n_layers
    assert TOPK_EXAMPLE not in seed.metrics  # 4 demonstrations: top-5 does not apply
    assert "at least 5 demonstrations, there are 4" in seed.not_applicable(TOPK_EXAMPLE)
    assert seed.n_ft_fixed is not None and seed.n_ft_fixed >= seed.n_f2t
    assert (seed.n_f2t == 0) == ("f2t" in seed.notes)
    markdown = dai_markdown(results)
    assert "afinn-sentiment (tiny-llama)" in markdown and "top-100 recall token" in markdown
    assert "f2t mode" in markdown and "n/a" in markdown


def test_seeds_share_zero_shot_and_differ_in_demonstrations(run):
    task = run[1].tasks["afinn-sentiment"]
    zsl = [s.metrics[ACCURACY["zsl"]].per_example for s in task.seeds]
    assert zsl[0] == zsl[1]  # ZSL does not depend on the demonstrations: run once
    icl = [s.metrics[SIMAOU].per_example for s in task.seeds]
    assert icl[0] != icl[1]


def test_resume_keeps_finished_tasks(run, tmp_path):
    out, _ = run
    results = json.loads((out / "results.json").read_text())
    results["tasks"]["afinn-sentiment"]["timing_s"]["sentinel"] = -1.0
    write_json_atomic(out / "results.json", results)
    resumed = run_dai(out, CONFIG, progress=False)
    assert resumed.tasks["afinn-sentiment"].timing_s["sentinel"] == -1.0


def test_results_of_another_schema_version_are_refused(run, tmp_path):
    out, _ = run
    data = json.loads((out / "results.json").read_text())
    data["schema_version"] = 1
    write_json_atomic(tmp_path / "results.json", data)
    with pytest.raises(SchemaVersionError, match="schema version 1"):
        run_dai(tmp_path, CONFIG, progress=False)


def test_full_disk_keeps_the_previous_results(tmp_path):
    """A write that hits a file-size limit (as a full disk would) fails cleanly and atomically."""
    import resource
    import signal

    path = write_json_atomic(tmp_path / "results.json", {"done": [1, 2, 3]})
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        with pytest.raises(ResultWriteError, match="previous version is unchanged"):
            write_json_atomic(path, {"big": "x" * 100_000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert json.loads(path.read_text()) == {"done": [1, 2, 3]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_prefix_reuse_and_batching_do_not_change_the_results(run, tmp_path):
    import dataclasses

    _, reused = run
    naive = run_dai(tmp_path, dataclasses.replace(CONFIG, reuse_prefix=False,
                                                  untrained_baseline=False, attribution=False),
                    progress=False)
    for a, b in zip(reused.tasks["afinn-sentiment"].seeds, naive.tasks["afinn-sentiment"].seeds,
                    strict=True):
        for name in (*ACCURACY.values(), SIMAOU, SIMAM_DELTA, KENDALL):
            assert abs(a.metrics[name].mean - b.metrics[name].mean) < 1e-4, name


def test_rows_validated_at_once_equal_one_by_one():
    """The learning-rate choice's validation accuracies, every row of a batched finetuning run in
    one forward, equal each row's own (a diverged row reported as such)."""
    import torch

    from dualform.experiments.dai.config import task_context
    from dualform.experiments.dai.selection import finetune_runs, ft_val_accuracies, ft_val_accuracy
    from dualform.models.load import load_model
    from dualform.tasks.prompts import sample_demos

    model = load_model("tiny-llama", dtype=torch.float64)
    ctx = task_context(model, "afinn-sentiment", CONFIG)
    rows = [(sample_demos(ctx.task, CONFIG.shots, s), lr) for s in (1, 2) for lr in (0.1, 0.01, 1e6)]
    runs = finetune_runs(model, ctx, rows)
    at_once = ft_val_accuracies(ctx, runs)
    assert at_once == [ft_val_accuracy(ctx, run) for run in runs]
    assert isinstance(at_once[2], str) and at_once[2].startswith("diverged")
    assert all(isinstance(a, float) for i, a in enumerate(at_once) if i % 3 != 2)
