"""analyses/flop_floor.py: the matrix FLOPs of a protocol task, counted, and the rate they meet."""

from __future__ import annotations

import dataclasses

import pytest

from dualform import DaiConfig, load_model
from dualform.models.cpu_matmul import best_product_rate


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
    assert best_product_rate(repeats=3) > 1e8  # FLOP/s of a real product, not a constant


def test_product_share_times_each_unit_and_finds_its_products(analysis):
    """analyses/product_share.py: every unit has FLOPs, a wall time and a share in products
    (the SGD steps as the difference of a LONG- and a SHORT-step run)."""
    script = analysis("product_share")
    config = DaiConfig(model="tiny-llama", tasks=("afinn-sentiment",), shots=script.LONG,
                       n_validation=4, n_test=8, seeds=1, demo_seeds=(1,), lr_grid=(0.1, 0.01))
    found = script.units("afinn-sentiment", config)
    assert list(found) == ["ICL records, 32 queries", "ICL attribution, 16 queries",
                           "SGD step, 2 rows", "SGD step, 1 rows"]
    for fn, base in found.values():
        seconds, flops, in_products, ops = script.measure(fn, base)
        assert flops > 0 and seconds > 0 and in_products > 0
        assert in_products == pytest.approx(sum(ops[k] for k in script.PRODUCT_OPS if k in ops))


@pytest.mark.parametrize(("name", "argv"), [("flop_floor", ["--tasks", "nope"]),
                                            ("product_share", ["--task", "nope"])])
def test_an_unknown_task_is_one_message_before_any_work(analysis, monkeypatch, capsys, name, argv):
    script = analysis(name)
    monkeypatch.setattr("sys.argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown task 'nope'" in err and "Traceback" not in err
