"""``dualform bench``: the performance targets of the issues as ratios measured in one run.

Every number is a median over ``repeats`` runs after a warm-up, against a baseline timed in the
same process on the same input:

* capture of q, k, v, z, attn_out and scores (all layers, 512 tokens) vs a bare forward,
  and a full ``run_with_cache`` for reference;
* ``dual_form`` on a ~300-token 32-demonstration prompt vs a bare forward of that prompt;
* one ``finetune_kv`` SGD step vs a plain forward+backward with gradients only on W_K/W_V;
* the second load of the embedded model (seconds).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import torch

from dualform.dual_form import dual_form
from dualform.finetune import _train_only_kv, finetune_kv, next_token_loss
from dualform.models import DEFAULT_MODEL, load_model
from dualform.probes import capture

CAPTURE_HOOKS = ("q", "k", "v", "z", "attn_out", "scores")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tokens(model, n: int) -> torch.Tensor:
    text = "In-context learning reads demonstrations and answers a query. " * (n // 8 + 8)
    return model.to_tokens(text)[:, :n]


def bench_load(name: str) -> float:
    load_model(name)  # ensure the cache exists
    start = time.perf_counter()
    load_model(name)
    return time.perf_counter() - start


def bench_capture(model, repeats: int, n_tokens: int = 512) -> dict:
    tokens = _tokens(model, n_tokens)
    with torch.no_grad():
        bare = median_time(lambda: model(tokens), repeats)
        focused = median_time(lambda: capture(model, tokens, hooks=CAPTURE_HOOKS), repeats)
        full = median_time(lambda: model.run_with_cache(tokens), max(1, repeats // 2))
        cap = capture(model, tokens, hooks=CAPTURE_HOOKS)
    captured_mb = sum(t.numel() * t.element_size() for t in cap.activations.values()) / 2**20
    return {"tokens": n_tokens, "bare_forward_s": bare, "capture_s": focused,
            "capture_ratio": focused / bare, "run_with_cache_ratio": full / bare,
            "captured_MiB": captured_mb}


def bench_dual_form(model, repeats: int, n_tokens: int = 300, n_query: int = 12) -> dict:
    tokens = _tokens(model, n_tokens)
    with torch.no_grad():
        bare = median_time(lambda: model(tokens), repeats)
        dual = median_time(lambda: dual_form(model, tokens, n_tokens - n_query - 1, demo_start=1), repeats)
        df = dual_form(model, tokens, n_tokens - n_query - 1, demo_start=1)
    result_mb = (df.delta_w_icl.numel() + df.w_zsl.numel()) * df.w_zsl.element_size() / 2**20
    return {"tokens": n_tokens, "bare_forward_s": bare, "dual_form_s": dual,
            "dual_form_ratio": dual / bare, "result_MiB": result_mb}


def bench_finetune_step(model, repeats: int, n_tokens: int = 24) -> dict:
    tokens = _tokens(model, n_tokens)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    plain = load_model_copy(model)
    params = list(_train_only_kv(plain).values())

    def fwd_bwd() -> None:
        loss = next_token_loss(plain(tokens), tokens, mask)
        torch.autograd.grad(loss, params)

    base = median_time(fwd_bwd, repeats)
    n_steps = 8
    run = median_time(lambda: finetune_kv(model, [tokens[0]] * n_steps, 0.01), max(1, repeats // 2))
    copy_s = median_time(lambda: load_model_copy(model), repeats)
    step = (run - copy_s) / n_steps
    return {"tokens": n_tokens, "forward_backward_s": base, "finetune_step_s": step,
            "finetune_step_ratio": step / base, "model_copy_once_s": copy_s}


def load_model_copy(model):
    from dualform.models import clone_model

    return clone_model(model)


def run_bench(name: str = DEFAULT_MODEL, repeats: int = 5, device: str | None = None) -> dict:
    model = load_model(name, device=device)
    out = {"model": name, "device": str(next(model.parameters()).device),
           "threads": torch.get_num_threads(), "second_load_s": bench_load(name)}
    out["capture"] = bench_capture(model, repeats)
    out["dual_form"] = bench_dual_form(model, repeats)
    out["finetune"] = bench_finetune_step(model, repeats)
    out["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out
