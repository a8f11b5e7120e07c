"""analyses/bench_task_threads.py: tasks side by side on threads give the numbers of one after
the other (the comparison it times is a fair one: the tasks share weights, not state) and leave
torch's thread count as it was."""

from __future__ import annotations

import torch

from dualform import DaiConfig, load_model


def test_side_by_side_tasks_give_the_same_numbers(single_thread, analysis):
    script = analysis("bench_task_threads")
    # One torch thread on both sides: a run on other thread counts may round differently (the
    # tiny model's SGD does, in the 8th digit), which is not what this test is about.
    models = (load_model("tiny-llama"), load_model("tiny-llama", untrained=True))
    config = DaiConfig(model="tiny-llama", tasks=("afinn-sentiment", "vader-valence"), shots=3,
                       n_validation=4, n_test=4, seeds=1, demo_seeds=(1,), lr_grid=(0.1,),
                       n_untrained=2, n_attribution=2)
    first = script.run_all(models, config.tasks, config)
    second = script.run_all(models, config.tasks, config, workers=2)
    assert torch.get_num_threads() == 1
    assert sorted(second) == sorted(config.tasks)
    assert script.same_numbers(first, second)
    first["vader-valence"].seeds[0].metrics["accuracy.icl"].per_example[0] += 1  # a difference is seen
    assert not script.same_numbers(first, second)
