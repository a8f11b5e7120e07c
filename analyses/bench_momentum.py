"""Cost of momentum attention: the drop-in hooks on the embedded model, and one seed of the experiment.

    python analyses/bench_momentum.py [--repeats 5] [--tokens 512] [--model smollm2-135m]
    python analyses/bench_momentum.py --per-seed [--steps 200]

Default: forwards with and without ``momentum_attention`` are interleaved in the same process
(so drift in machine load hits both alike); prints the median and min times and their ratio
(target: ≤ 1.15×).

``--per-seed``: trains the vanilla and the momentum twin of one seed of the default
``dualform reproduce momentum`` config for ``--steps`` steps in this process (one torch thread, as
each worker), measures CPU-seconds per training step and for the evaluation, and extrapolates
the CPU-seconds of a seed and of the whole default run (and its wall time on ``workers`` free
cores) at the config's steps. ``--out FILE`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dualform.core.momentum import momentum_attention
from dualform.infra.io import write_json_atomic
from dualform.models.load import load_model


def timed_forward(model, tokens: torch.Tensor, eta: float | None) -> float:
    """Seconds for one forward; ``eta=None`` is the bare model."""
    start = time.perf_counter()
    with torch.no_grad():
        if eta is None:
            model(tokens)
        else:
            with momentum_attention(model, eta):
                model(tokens)
    return time.perf_counter() - start


def bench(model_name: str, n_tokens: int, repeats: int, eta: float) -> dict:
    model = load_model(model_name, device="cpu")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(100, model.cfg.d_vocab - 100, (1, n_tokens), generator=gen)
    timed_forward(model, tokens, None)  # warm-up, both paths
    timed_forward(model, tokens, eta)
    bare, momentum = [], []
    for _ in range(repeats):
        bare.append(timed_forward(model, tokens, None))
        momentum.append(timed_forward(model, tokens, eta))
    return {
        "model": model_name, "tokens": n_tokens, "repeats": repeats, "eta": eta,
        "threads": torch.get_num_threads(), "bare_s": bare, "momentum_s": momentum,
        "bare_median_s": statistics.median(bare), "momentum_median_s": statistics.median(momentum),
        "ratio_median": statistics.median(momentum) / statistics.median(bare),
        "ratio_min": min(momentum) / min(bare),
    }


def per_seed_cost(steps: int) -> dict:
    """CPU-s per step and per evaluation of both twins, extrapolated to the default config."""
    from dataclasses import replace

    from dualform.experiments.momentum.experiment import Job, MomentumConfig, run_job

    config = MomentumConfig()
    short = replace(config, steps=steps, corpus="recall", write_png=False)
    twins = {}
    for job in (Job("vanilla", 0.0, 0), Job("momentum", 0.01, 0)):
        start = time.process_time()
        record = run_job(short, job, out_dir=".", progress=False)
        total = time.process_time() - start
        per_step = record["train_cpu_seconds"] / steps
        twins[job.variant] = {"cpu_s_per_step": per_step, "eval_cpu_s": total - record["train_cpu_seconds"],
                              "cpu_s_per_run": per_step * config.steps + total - record["train_cpu_seconds"]}
    per_seed = sum(t["cpu_s_per_run"] for t in twins.values())
    n_runs = 2 * len(config.seeds) + len(config.eta_sweep) - 1
    total_cpu = per_seed / 2 * n_runs
    return {
        "measured_steps": steps, "config_steps": config.steps, "twins": twins,
        "cpu_s_per_seed": per_seed, "runs": n_runs, "seeds": len(config.seeds),
        "cpu_s_default_run": total_cpu, "workers": config.workers,
        "wall_min_default_run_on_free_cores": total_cpu / config.workers / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eta", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--per-seed", action="store_true", help="cost of one seed of the experiment")
    parser.add_argument("--steps", type=int, default=200, help="training steps timed per twin")
    args = parser.parse_args()
    if args.per_seed:
        torch.set_num_threads(1)
        cost = per_seed_cost(args.steps)
        print(json.dumps(cost, indent=2))
        if args.out:
            write_json_atomic(args.out, cost)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench(args.model, args.tokens, args.repeats, args.eta)
    print(f"{result['model']}, {result['tokens']} tokens, {result['repeats']} repeats, "
          f"{result['threads']} threads")
    print(f"bare forward:     median {result['bare_median_s']:.3f} s  (min {min(result['bare_s']):.3f})")
    print(f"momentum forward: median {result['momentum_median_s']:.3f} s  "
          f"(min {min(result['momentum_s']):.3f})")
    print(f"ratio: {result['ratio_median']:.3f}x median, {result['ratio_min']:.3f}x min "
          f"(target <= 1.15x)")
    if args.out:
        write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
