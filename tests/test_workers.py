"""``reproduce dai --workers N``: tasks side by side on worker threads give the numbers of one
after the other, in the configured order, and an error loses none of the finished tasks."""

import dataclasses
import threading
import time

import pytest
import torch
from torch import nn

from dualform.errors import InvalidArgumentError
from dualform.experiments.dai.config import DaiConfig
from dualform.experiments.dai.protocol import run_dai
from dualform.experiments.dai.workers import run_tasks

CONFIG = DaiConfig(
    model="tiny-llama", tasks=("vader-valence", "afinn-sentiment"), shots=3, n_validation=4,
    n_test=4, seeds=1, demo_seeds=(1,), lr_grid=(0.1,), n_untrained=2, n_attribution=2,
)


def test_two_workers_give_the_numbers_of_one(tmp_path, single_thread):
    # One torch thread per task on both sides: other thread counts may round differently (the
    # tiny model's SGD does, in the 8th digit), which is not what this test is about.
    one = run_dai(tmp_path / "one", CONFIG, progress=False)
    two = run_dai(tmp_path / "two", dataclasses.replace(CONFIG, workers=2), progress=False)
    assert torch.get_num_threads() == 1
    assert list(two.tasks) == list(CONFIG.tasks)  # the configured order, whatever finished first
    for name in CONFIG.tasks:
        a, b = one.tasks[name], two.tasks[name]
        for sa, sb in zip(a.seeds + a.untrained, b.seeds + b.untrained, strict=True):
            assert sa.metrics.keys() == sb.metrics.keys()
            for metric, value in sa.metrics.items():
                assert value.per_example == sb.metrics[metric].per_example, (name, metric)
        assert a.attribution.icl == b.attribution.icl


def test_a_run_resumed_with_other_workers_keeps_its_tasks(tmp_path, single_thread):
    first = dataclasses.replace(CONFIG, tasks=CONFIG.tasks[:1], untrained_baseline=False,
                                attribution=False)
    done = run_dai(tmp_path, first, progress=False).tasks[first.tasks[0]]
    more = run_dai(tmp_path, dataclasses.replace(first, tasks=CONFIG.tasks, workers=2), progress=False)
    assert list(more.tasks) == list(CONFIG.tasks)
    assert more.tasks[first.tasks[0]].timing_s == done.timing_s  # kept, not rerun


def test_a_failing_task_lets_the_running_one_finish_then_raises():
    failed, calls = threading.Event(), []

    def run(model, name):
        calls.append(name)
        if name == "b":
            failed.set()
            raise ValueError("task b broke")
        failed.wait(5)
        time.sleep(0.3)  # b's error is in before a ends: no task is handed out after it
        return name.upper()

    threads = torch.get_num_threads()
    got = []
    with pytest.raises(ValueError, match="task b broke"):
        for name, result in run_tasks(run, ["a", "b", "c", "d"], (None,), workers=2):
            got.append((name, result))
    assert got == [("a", "A")]  # the running task finished and was handed over
    assert sorted(calls) == ["a", "b"]  # nothing started after the error
    assert torch.get_num_threads() == threads


def test_each_worker_has_its_own_modules_over_the_same_weights():
    model, seen = nn.Linear(3, 2), []

    def run(m, name):
        seen.append(m)
        time.sleep(0.2)  # both workers hold a task at once
        return name

    assert sorted(n for n, _ in run_tasks(run, ["a", "b"], (model,), workers=2)) == ["a", "b"]
    assert len({id(m) for m in seen}) == 2 and any(m is model for m in seen)
    other = next(m for m in seen if m is not model)
    assert other.weight.data_ptr() == model.weight.data_ptr()


def test_one_worker_runs_in_order_in_this_thread():
    here = threading.current_thread()
    got = list(run_tasks(lambda m, n: threading.current_thread() is here, ["x", "y", "z"], (None,),
                         workers=1))
    assert got == [("x", True), ("y", True), ("z", True)]


def test_workers_below_one_are_refused():
    with pytest.raises(InvalidArgumentError, match="workers"):
        DaiConfig(workers=0)


def test_no_worker_gets_a_copy_of_what_another_worker_did_to_its_model():
    """The copies are made before any worker starts: a copy made while the first worker holds
    hooks on the model would carry them (a real bug once: a logit-gathering hook fired twice)."""
    model, found = nn.Linear(3, 2), []

    def run(m, name):
        found.append(getattr(m, "in_use", None))
        m.in_use = name  # what a hook on the model is while a task runs
        time.sleep(0.3)
        del m.in_use
        return name

    assert len(list(run_tasks(run, ["a", "b", "c"], (model,), workers=2))) == 3
    assert found == [None, None, None]
