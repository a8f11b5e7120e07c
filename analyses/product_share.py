"""Where one unit of ``reproduce dai``'s work goes: its matrix products, at what rate, and the rest.

For the units the default run repeats most, on the embedded model and a real task's 32-shot
prompts, prints the wall time of one unit, its matrix FLOPs (``FlopCounterMode``), the share of
the time ``torch.profiler`` finds in the matrix-product operators and the rate those run at,
against this machine's best float32 product rate measured in the same run
(:func:`dualform.models.cpu_matmul.best_product_rate`):

* a batch of 32 ICL queries recorded on the demonstration prefix (the dual form included);
* a batch of 16 ICL queries' head attribution (forward + backward on the prefix);
* one SGD step of the learning-rate grid (12 rows: 3 seeds × 4 rates) and of a 3-row run (the
  untrained baseline's), as the difference of a 12-step and a 4-step run divided by 8, so that
  setting up the batch is left out.

``efficiency`` is FLOPs / wall / best rate: the fraction of the machine's product rate the unit
reaches end to end. A unit whose products run near the best rate and take most of its time has
little left to gain without fewer FLOPs.

Usage::

    python analyses/product_share.py                       # afinn-sentiment
    python analyses/product_share.py --task country-region
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from dualform.core.attribution import icl_head_effects_batch
from dualform.core.finetune_grid import finetune_kv_rows
from dualform.errors import DualformError
from dualform.experiments.dai.conditions import (
    demo_training_texts,
    prefix_run,
    prefix_sums,
    prompt_pair,
    record_batch,
)
from dualform.experiments.dai.config import DaiConfig, load_run_model, task_context
from dualform.models.cpu_matmul import best_product_rate, best_time, cpu_matmul_setting
from dualform.tasks.prompts import check_task_name, sample_demos

#: The operators that multiply matrices (oneDNN's linear, PyTorch's default paths, attention).
PRODUCT_OPS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm",
               "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu")
REPEATS = 3  # timed calls per unit (the fastest counts), after a warm-up call
LONG, SHORT = 12, 4  # SGD steps of the two runs whose difference is timed


def flops(fn: Callable[[], object]) -> float:
    """Matrix FLOPs of one call (counted on the default linear path: the counter does not see
    oneDNN's operator; the FLOPs are the same)."""
    with cpu_matmul_setting("default"), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def profiled(fn: Callable[[], object]) -> dict[str, float]:
    """Seconds ``torch.profiler`` puts in each operator (its own time) during one call."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def product_seconds(ops: dict[str, float]) -> float:
    return sum(seconds for key, seconds in ops.items() if key in PRODUCT_OPS)


def measure(fn: Callable[[], object], base: Callable[[], object] | None = None
            ) -> tuple[float, float, float, dict[str, float]]:
    """``(wall s, FLOPs, product s, every operator's s)`` of ``fn``, less those of ``base``
    when given."""
    ops = profiled(fn)
    own = (best_time(fn, repeats=REPEATS), flops(fn), product_seconds(ops))
    if base is None:
        return (*own, ops)
    base_ops = profiled(base)
    less = (best_time(base, repeats=REPEATS), flops(base), product_seconds(base_ops))
    ops = {key: seconds - base_ops.get(key, 0.0) for key, seconds in ops.items()}
    return (*(a - b for a, b in zip(own, less, strict=True)), ops)


def units(task_name: str, config: DaiConfig | None = None
          ) -> dict[str, tuple[Callable[[], object], Callable[[], object] | None]]:
    """The timed units (and the base each is measured against) on ``task_name``'s prompts, with
    ``config``'s model, shots, seeds and rates (the default run's unless given)."""
    config = config or DaiConfig()
    model = load_run_model(config)
    ctx = task_context(model, task_name, config)
    demos = sample_demos(ctx.task, config.shots, config.candidate_seeds(0)[0])
    pairs = [prompt_pair(model, ctx.task, demos, ex) for ex in ctx.task.test[:32]]
    head = pairs[0].icl
    run = prefix_run(model, head)
    sums = prefix_sums(run, head)
    queries = [p.icl.tokens[0, head.n_prefix:] for p in pairs]
    gold = [ex.label for ex in ctx.task.test[:32]]
    texts = [demo_training_texts(model, ctx.task, sample_demos(ctx.task, config.shots, seed))
             for seed in (config.candidate_seeds(r)[0] for r in range(config.seeds))]
    grid = [(t, lr) for t in texts for lr in config.lr_grid]
    untrained_rows = [(t, min(config.lr_grid)) for t in texts]

    def steps(rows, n: int) -> Callable[[], object]:
        return lambda: finetune_kv_rows(model, [(t[:n], lr) for t, lr in rows])

    return {
        "ICL records, 32 queries": (
            lambda: record_batch(run, queries, ctx.label_ids, demo=head, sums=sums), None),
        "ICL attribution, 16 queries": (
            lambda: icl_head_effects_batch(run, queries[:16], pairs[0].demo_slice, ctx.label_ids,
                                           gold[:16]), None),
        f"SGD step, {len(grid)} rows": (steps(grid, LONG), steps(grid, SHORT)),
        f"SGD step, {len(untrained_rows)} rows": (steps(untrained_rows, LONG), steps(untrained_rows, SHORT)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="afinn-sentiment")
    parser.add_argument("--ops", type=int, default=6, help="other operators listed per unit")
    args = parser.parse_args()
    try:
        check_task_name(args.task)
    except DualformError as err:  # one message, no traceback
        parser.error(str(err))
    rate = best_product_rate()
    print(f"best float32 matrix product here: {rate / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"{'unit':<30} {'wall':>8} {'GFLOP':>7} {'in products':>12} {'product rate':>13} {'efficiency':>10}")
    others = {}
    for name, (fn, base) in units(args.task).items():
        seconds, n_flops, in_products, ops = measure(fn, base)
        n = 1 if base is None else LONG - SHORT  # a difference of two runs: per step
        seconds, n_flops, in_products = seconds / n, n_flops / n, in_products / n
        others[name] = sorted(((s / n, key) for key, s in ops.items() if key not in PRODUCT_OPS),
                              reverse=True)[: args.ops]
        print(f"{name:<30} {seconds * 1000:6.0f} ms {n_flops / 1e9:7.1f} "
              f"{in_products / seconds:11.0%} {n_flops / in_products / 1e9:8.0f} GFLOP/s "
              f"{n_flops / seconds / rate:10.0%}", flush=True)
    print(f"\nthe {args.ops} largest other operators (own time per unit, by torch.profiler):")
    for name, top in others.items():
        print(f"  {name}: " + ", ".join(f"{key} {s * 1000:.0f} ms" for s, key in top))

if __name__ == "__main__":
    main()
