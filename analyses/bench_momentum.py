"""Cost of the drop-in momentum attention on the embedded model (all layers, 512 tokens).

    python analyses/bench_momentum.py [--repeats 5] [--tokens 512] [--model smollm2-135m]

Forwards with and without ``momentum_attention`` are interleaved in the same process (so drift
in machine load hits both alike); prints the median and min times and their ratio (target:
≤ 1.15×). ``--out FILE`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dualform.core.momentum import momentum_attention
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eta", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
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
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
