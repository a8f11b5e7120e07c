"""Sweeps on an executor: the same numbers as ``run_dai``, one file per job, resumable, and the
Ray executor on a local Ray."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

from dualform.experiments.dai.config import DaiConfig
from dualform.experiments.dai.protocol import run_dai
from dualform.experiments.dai.results import DaiResults, TaskResult
from dualform.experiments.dai.sweep import Job, run_sweep
from dualform.infra.executors import LocalExecutor, get_executor
from dualform.infra.io import as_stored

CONFIG = DaiConfig(
    model="tiny-llama", tasks=("afinn-sentiment",), shots=4, n_validation=4, n_test=4,
    seeds=2, demo_seeds=(1, 2), lr_grid=(0.1, 0.01, 1e6), batch_size=4,
)
SAME = ("seeds", "untrained", "intervals", "untrained_intervals", "differences", "attribution")


def _same_numbers(a: TaskResult, b: TaskResult) -> None:
    a, b = as_stored(a.to_json()), as_stored(b.to_json())  # as written to results.json
    for key in SAME:
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("dai")
    return run_dai(out, CONFIG, progress=False).tasks["afinn-sentiment"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_sweep(out, CONFIG, executor=LocalExecutor(progress=False))


def test_local_sweep_equals_run_dai(reference, local_sweep):
    out, results = local_sweep
    sweep_task = results["tiny-llama"].tasks["afinn-sentiment"]
    _same_numbers(sweep_task, reference)
    on_disk = DaiResults.load(out / "tiny-llama")
    assert ([s.selection.lr for s in on_disk.tasks["afinn-sentiment"].seeds]
            == [s.selection.lr for s in reference.seeds])
    assert on_disk.failed_jobs == []


def test_each_job_has_its_own_file_and_a_rerun_runs_nothing(local_sweep):
    out, _ = local_sweep
    names = sorted(p.name for p in (out / "jobs").iterdir())
    # per replicate 2 seed jobs and 3 lr jobs (the chosen seed); 1 test job for the task
    assert sum(n.startswith("seed__") for n in names) == 4
    assert sum(n.startswith("lr__") for n in names) == 6
    assert sum(n.startswith("test__") for n in names) == 1
    diverged = json.loads((out / "jobs" / next(n for n in names if "lr1e+06" in n)).read_text())
    assert diverged["val_acc"].startswith("diverged")

    class Refuse(LocalExecutor):
        def map(self, fn, items):
            assert list(items) == [], f"recomputed {items}"
            return iter(())

    again = run_sweep(out, CONFIG, executor=Refuse(progress=False))
    assert again["tiny-llama"].tasks["afinn-sentiment"].seeds


def test_a_lost_job_costs_one_job_and_is_retried(tmp_path, single_thread):
    cfg = dataclasses.replace(CONFIG, demo_seeds=(1,), lr_grid=(0.1,), untrained_baseline=False,
                              attribution=False)

    class LoseLr(LocalExecutor):
        def map(self, fn, items):
            for item in items:
                if item.stage == "lr":
                    yield item, None, RuntimeError("worker died")
                else:
                    yield item, fn(item), None

    broken = run_sweep(tmp_path, cfg, executor=LoseLr(progress=False))["tiny-llama"]
    assert broken.tasks == {}
    assert broken.failed_jobs[0]["error"] == "RuntimeError: worker died"
    assert (tmp_path / "jobs" / "seed__tiny-llama__afinn-sentiment__rep0__seed1.json").exists()
    fixed = run_sweep(tmp_path, cfg, executor=LocalExecutor(progress=False))["tiny-llama"]
    assert fixed.failed_jobs == [] and "afinn-sentiment" in fixed.tasks


def test_job_keys_are_distinct_and_file_safe():
    config = dataclasses.replace(CONFIG, model="org/model")
    keys = {Job("lr", config, "t", r, 1 + 1000 * r, lr).key for lr in (0.1, 0.01) for r in (0, 1)}
    assert len(keys) == 4 and all("/" not in k for k in keys)


def test_unknown_executor_is_a_clear_error():
    with pytest.raises(ValueError, match="local' or 'ray"):
        get_executor("slurm")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="pip install 'dualform[ray]'")
def test_ray_sweep_on_a_local_ray_equals_the_local_one(tmp_path, local_sweep):
    _, local = local_sweep
    executor = get_executor("ray", num_cpus=2, progress=False)
    try:
        results = run_sweep(tmp_path, CONFIG, executor=executor)
    finally:
        executor.shutdown()
    _same_numbers(results["tiny-llama"].tasks["afinn-sentiment"],
                  local["tiny-llama"].tasks["afinn-sentiment"])
    assert len(list((tmp_path / "jobs").iterdir())) == 11
