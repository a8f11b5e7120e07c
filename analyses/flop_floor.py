"""How fast could ``reproduce dai`` be on this machine? Its matrix FLOPs against the best rate.

Runs the protocol task by task (the default configuration unless options say otherwise) under
``torch.utils.flop_counter.FlopCounterMode``, which counts every matrix product of the forward
and backward passes (``mm``, ``bmm``, ``addmm``, attention), and measures in the same run the best
float32 matrix-product rate of this machine (a ``[1200, 576] × [576, 1536]`` product, the shape
of SmolLM2-135M's MLP on a large batch). Their quotient is a floor: the wall time the run would
take if every product ran at that rate and nothing else cost anything. The counter slows the
run down (Python sees every operation), so time the real run on its own; this script's own
wall time is not the run's.

Usage::

    python analyses/flop_floor.py                          # every packaged task (≈ 25 min)
    python analyses/flop_floor.py --tasks country-region   # one task
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from dualform.errors import DualformError
from dualform.experiments.dai.config import DaiConfig, load_run_model
from dualform.experiments.dai.protocol import run_task
from dualform.models.cpu_matmul import best_product_rate, cpu_matmul_setting
from dualform.tasks.prompts import check_task_name


def count_task(model, untrained, name: str, config: DaiConfig) -> float:
    """Matrix FLOPs of one task of the protocol (validation, test, untrained baseline), counted
    with the default linear path (the counter does not see oneDNN's op; the FLOPs are the same)."""
    with cpu_matmul_setting("default"), FlopCounterMode(display=False) as counter:
        run_task(model, untrained, name, config, progress=False)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=None, help="default: every packaged task")
    parser.add_argument("--seeds", type=int, default=DaiConfig.seeds)
    args = parser.parse_args()
    config = DaiConfig(seeds=args.seeds)
    if args.tasks:
        config = dataclasses.replace(config, tasks=tuple(args.tasks))
    try:
        for name in config.tasks:
            check_task_name(name)
    except DualformError as err:  # one message, no traceback
        parser.error(str(err))
    rate = best_product_rate()
    print(f"best float32 matrix product on this machine: {rate / 1e9:.0f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")
    model = load_run_model(config)
    untrained = load_run_model(config, untrained=True) if config.untrained_baseline else None
    total = 0.0
    for name in config.tasks:
        flops = count_task(model, untrained, name, config)
        total += flops
        print(f"{name}: {flops / 1e12:.2f} TFLOP, floor {flops / rate:.0f} s", flush=True)
    print(f"all {len(config.tasks)} tasks: {total / 1e12:.1f} TFLOP; at {rate / 1e9:.0f} GFLOP/s "
          f"that is {total / rate:.0f} s ({total / rate / 60:.1f} min) of matrix products alone")


if __name__ == "__main__":
    main()
