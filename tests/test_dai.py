"""The ICL-vs-FT pipeline end to end on a tiny model: complete, strict JSON, resumable."""

import json

import pytest

from dualform.experiments.dai.protocol import DaiConfig, run_dai
from dualform.infra.io import ResultWriteError, write_json_atomic
from dualform.viz.tables import dai_markdown

CONFIG = DaiConfig(
    model="tiny-llama", tasks=("afinn-sentiment",), shots=4, n_validation=4, n_test=4,
    demo_seeds=(1,), lr_grid=(0.1, 1e6),
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dai")
    return out, run_dai(out, CONFIG, progress=False)


def test_results_are_complete_and_strict_json(run):
    out, results = run
    on_disk = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    task = on_disk["tasks"]["afinn-sentiment"]
    assert set(task["accuracy"]) == {"zsl", "icl", "ft"}
    assert task["selection"]["lr"] == 0.1  # the absurd rate diverged and was recorded
    assert task["selection"]["lr_val_acc"]["1000000.0"].startswith("diverged")
    n_layers = 2
    assert len(task["simaou"]["normalized"]["per_layer"]) == n_layers
    assert len(task["simam"]["delta"]["per_head"][0]) == 4  # heads
    assert len(task["attribution"]["icl"]) == n_layers
    assert "untrained" in task and "simaou" in task["untrained"]
    assert task["untrained"]["simaou"] != task["simaou"]  # another random draw of weights
    assert len(task["dual_form"]["norm_delta_w_icl"]) == n_layers
    assert len(task["dual_form"]["cos_icl_update_ft"]["per_head"][0]) == 4
    assert on_disk["config"]["tasks"] == ["afinn-sentiment"]
    assert on_disk["config"]["scaled_queries"] and not on_disk["config"]["keep_separator"]
    assert len(task["kendall"]["example"]["per_layer"]) == n_layers
    recall = task["topk_recall"]
    assert recall["token"]["k"] == 100 and len(recall["token"]["value"]["per_layer"]) == n_layers
    assert "at least 5 demonstrations, there are 4" in recall["example"]["not_applicable"]
    assert task["notes"]["topk_recall.example"] == recall["example"]["not_applicable"]
    assert ("not_applicable" in task["f2t"]) == (task["n_f2t"] == 0)
    markdown = dai_markdown(on_disk)
    assert "afinn-sentiment (tiny-llama)" in markdown and "top-100 recall token" in markdown
    assert "f2t mode" in markdown and "n/a" in markdown


def test_resume_keeps_finished_tasks(run, tmp_path):
    out, _ = run
    results = json.loads((out / "results.json").read_text())
    results["tasks"]["afinn-sentiment"]["sentinel"] = "kept"
    write_json_atomic(out / "results.json", results)
    resumed = run_dai(out, CONFIG, progress=False)
    assert resumed["tasks"]["afinn-sentiment"]["sentinel"] == "kept"


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
    naive = run_dai(tmp_path, dataclasses.replace(CONFIG, reuse_prefix=False, untrained_baseline=False,
                                                  attribution=False), progress=False)
    a, b = reused["tasks"]["afinn-sentiment"], naive["tasks"]["afinn-sentiment"]
    assert a["accuracy"] == b["accuracy"]
    for metric in (("simaou", "normalized"), ("simam", "delta"), ("kendall", "value")):
        x, y = a[metric[0]][metric[1]]["mean"], b[metric[0]][metric[1]]["mean"]
        assert abs(x - y) < 1e-4, metric
