"""analyses/flop_floor.py: the matrix FLOPs of a protocol task, counted, and the rate they meet."""

from __future__ import annotations

import dataclasses

from dualform import DaiConfig, load_model


def test_a_task_counts_its_matrix_flops_and_attribution_adds_to_them(analysis):
    script = analysis("flop_floor")
    model = load_model("tiny-llama")
    config = DaiConfig(model="tiny-llama", tasks=("afinn-sentiment",), shots=3, n_validation=4,
                       n_test=4, seeds=1, demo_seeds=(1,), lr_grid=(0.1,),
                       untrained_baseline=False, attribution=False)
    plain = script.count_task(model, None, "afinn-sentiment", config)
    more = script.count_task(model, None, "afinn-sentiment",
                             dataclasses.replace(config, attribution=True))
    assert 0 < plain < more  # the attribution's forward and backward passes are counted too
    assert script.best_matmul_rate(repeats=3) > 1e8  # FLOP/s of a real product, not a constant
