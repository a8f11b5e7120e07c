"""``dualform bench``: the performance targets of the issues as ratios measured in one run.

Every number is a median over ``repeats`` runs after a warm-up, against a baseline timed in the
same process on the same input:

* capture of q, k, v, z, attn_out and scores (all layers, 512 tokens) vs a bare forward,
  and a full ``run_with_cache`` for reference;
* ``dual_form`` on a ~300-token 32-demonstration prompt vs a bare forward of that prompt;
* one ``finetune_kv`` SGD step vs a plain forward+backward with gradients only on W_K/W_V;
* per-query ICL cost with prefix reuse + batching vs one full forward per query (8/16/32 shots);
* query batches reading the prefix's cache in place (shared-prefix attention) vs each batch on
  its own copy of it (the bridge's attention), 32 shots;
* seeds × rates finetuning in one batched run vs one LR grid per seed;
* frozen float32 CPU linears through oneDNN vs PyTorch's default path (MKL): one linear
  product, a batched forward of the model and a batched finetuning grid
  (:mod:`dualform.models.cpu_matmul`); on one task end to end with ``--end-to-end``;
* optionally (``--end-to-end``) the default ``reproduce dai`` (wall, CPU, stages), and on one
  task seed sharing on vs off and reuse+batching on vs off;
* the second load of the embedded model (seconds);
* on a random model of Pythia-160M's shape (GPT-NeoX: fused QKV, rotary on a quarter of each
  head): capture of q, k, v, z, scores and ``dual_form``, each vs a bare forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dualform.core.dual_form import dual_form
from dualform.core.finetune import (
    copy_for_finetuning,
    finetune_kv,
    next_token_loss,
    train_only_kv,
)
from dualform.errors import InvalidArgumentError
from dualform.experiments.dai.config import DaiConfig
from dualform.experiments.dai.protocol import run_dai
from dualform.experiments.dai.results import DaiResults
from dualform.infra.rng import seeded
from dualform.models.cpu_matmul import (
    PROBE_SHAPE,
    cpu_matmul_setting,
    fast_linears,
    measured_speedup,
    onednn_available,
)
from dualform.models.load import DEFAULT_MODEL, load_model
from dualform.probes import capture

CAPTURE_HOOKS = ("q", "k", "v", "z", "attn_out", "attn_scores")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int) -> dict:
    """Time baseline and candidate back to back, alternating which runs first, ``repeats``
    times; the ratio is the median of the per-pair ratios, so load from other processes on
    the machine hits both sides alike."""
    baseline(), candidate()  # warm-up
    base, cand, ratios = [], [], []
    for i in range(repeats):
        order = [(base, baseline), (cand, candidate)]
        for bucket, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
        ratios.append(cand[-1] / base[-1])
    return {"baseline_s": statistics.median(base), "candidate_s": statistics.median(cand),
            "ratio": statistics.median(ratios)}


def _tokens(model, n: int) -> torch.Tensor:
    text = "In-context learning reads demonstrations and answers a query. " * (n // 8 + 8)
    return model.to_tokens(text)[:, :n]


def bench_load(name: str) -> float:
    load_model(name)  # ensure the cache exists
    start = time.perf_counter()
    load_model(name)
    return time.perf_counter() - start


def bench_capture(model, repeats: int, n_tokens: int = 512,
                  hooks: tuple[str, ...] = CAPTURE_HOOKS) -> dict:
    tokens = _tokens(model, n_tokens)
    with torch.no_grad():
        bare = lambda: model(tokens)  # noqa: E731
        focused = paired(bare, lambda: capture(model, tokens, hooks=hooks), repeats)
        full = paired(bare, lambda: model.run_with_cache(tokens), max(2, repeats // 2))
        cap = capture(model, tokens, hooks=hooks)
    captured_mb = sum(t.numel() * t.element_size() for t in cap.activations.values()) / 2**20
    return {"tokens": n_tokens, "bare_forward_s": focused["baseline_s"],
            "capture_s": focused["candidate_s"], "capture_ratio": focused["ratio"],
            "run_with_cache_ratio": full["ratio"], "captured_MiB": captured_mb}


def bench_dual_form(model, repeats: int, n_tokens: int = 300, n_query: int = 12) -> dict:
    tokens = _tokens(model, n_tokens)
    n_demo = n_tokens - n_query - 1
    with torch.no_grad():
        timing = paired(lambda: model(tokens),
                        lambda: dual_form(model, tokens, n_demo, demo_start=1), repeats)
        dual = dual_form(model, tokens, n_demo, demo_start=1)
    result_mb = (dual.delta_w_icl.numel() + dual.w_zsl.numel()) * dual.w_zsl.element_size() / 2**20
    return {"tokens": n_tokens, "bare_forward_s": timing["baseline_s"],
            "dual_form_s": timing["candidate_s"], "dual_form_ratio": timing["ratio"],
            "result_MiB": result_mb}


def bench_finetune_step(model, repeats: int, n_tokens: int = 24, n_steps: int = 8) -> dict:
    """``finetune_kv`` over ``n_steps`` texts (minus its one model copy) / ``n_steps`` plain
    Hugging Face forward+backward passes with gradients only on W_K/W_V."""
    tokens = _tokens(model, n_tokens)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    plain = load_model_copy(model)
    params = list(train_only_kv(plain).values())
    hf = plain.original_model  # the Hugging Face model under the bridge

    def fwd_bwd() -> None:
        for _ in range(n_steps):
            loss = next_token_loss(hf(tokens).logits, tokens, mask)
            torch.autograd.grad(loss, params)

    copy_s = median_time(lambda: copy_for_finetuning(model, None), repeats)

    def finetune() -> None:
        finetune_kv(model, [tokens[0]] * n_steps, 0.01)

    timing = paired(fwd_bwd, finetune, max(2, repeats // 2))
    step = (timing["candidate_s"] - copy_s) / n_steps
    base = timing["baseline_s"] / n_steps
    return {"tokens": n_tokens, "forward_backward_s": base, "finetune_step_s": step,
            "finetune_step_ratio": step / base,
            "finetune_call_ratio_incl_copy": timing["ratio"], "model_copy_once_s": copy_s}


def icl_prompts(model, shots: int, n_queries: int) -> tuple[list, list[int]]:
    """The ICL prompts of afinn-sentiment's first ``n_queries`` test examples with ``shots``
    demonstrations (seed 1), and the label token ids: what the prefix benchmarks time."""
    from dualform.experiments.dai.conditions import prompt_pair
    from dualform.tasks.prompts import label_token_ids, load_task, sample_demos

    task = load_task("afinn-sentiment")
    demos = sample_demos(task, shots, seed=1)
    prompts = [prompt_pair(model, task, demos, ex).icl for ex in task.test[:n_queries]]
    return prompts, label_token_ids(model, task)


def bench_prefix(model, shots: tuple[int, ...] = (8, 16, 32), n_queries: int = 16) -> dict:
    """Per-query ICL record cost: one full forward per query vs prefix reuse + batching
    (the prefix run is included, amortised over ``n_queries``)."""
    from dualform.experiments.dai.conditions import record_all

    out = {}
    for k in shots:
        prompts, labels = icl_prompts(model, k, n_queries)
        timing = paired(
            lambda p=prompts, ids=labels: record_all(model, p, ids, dual=True, reuse_prefix=True),
            lambda p=prompts, ids=labels: record_all(model, p, ids, dual=True, reuse_prefix=False),
            2,
        )
        out[str(k)] = {"prompt_tokens": int(prompts[0].tokens.shape[-1]),
                       "naive_per_query_s": timing["candidate_s"] / n_queries,
                       "reuse_per_query_s": timing["baseline_s"] / n_queries,
                       "speedup": timing["ratio"]}
    return out


def bench_shared_prefix(model, shots: int = 32, n_queries: int = 64, repeats: int = 2) -> dict:
    """ICL records of ``n_queries`` test queries in batches on one ``shots``-demonstration
    prefix: each batch on its own copy of the prefix's cache through the bridge's attention vs
    every batch reading the one cache in place
    (:mod:`dualform.models.compat.prefix_attention`). The prefix run itself is not timed."""
    from dualform.experiments.dai.conditions import prefix_run, record_all

    prompts, labels = icl_prompts(model, shots, n_queries)
    run = prefix_run(model, prompts[0])
    if not run.shared:
        return {"available": False}

    def records(shared: bool) -> Callable[[], object]:
        def go() -> object:
            run.shared = shared
            try:
                return record_all(model, prompts, labels, dual=True, run=run, batch_size=32)
            finally:
                run.shared = True
        return go

    timing = paired(records(False), records(True), repeats)
    return {"available": True, "prompt_tokens": int(prompts[0].tokens.shape[-1]),
            "queries": len(prompts), "copied_s": timing["baseline_s"],
            "shared_s": timing["candidate_s"], "speedup": 1 / timing["ratio"]}


def bench_seed_grid(model, seeds: int = 3, lrs: tuple[float, ...] = (0.01, 0.005, 0.001, 0.0005),
                    shots: int = 16, repeats: int = 2) -> dict:
    """Finetuning of every seed × rate: one batched run (:func:`finetune_kv_rows`, each row its
    own demonstrations and rate) vs one batched LR grid per seed (the per-seed path)."""
    from dualform.core.finetune_grid import finetune_kv_grid, finetune_kv_rows
    from dualform.experiments.dai.conditions import demo_training_texts
    from dualform.tasks.prompts import load_task, sample_demos

    task = load_task("afinn-sentiment")
    texts = [demo_training_texts(model, task, sample_demos(task, shots, s)) for s in range(1, seeds + 1)]
    timing = paired(lambda: [finetune_kv_grid(model, t, lrs) for t in texts],
                    lambda: finetune_kv_rows(model, [(t, lr) for t in texts for lr in lrs]), repeats)
    return {"seeds": seeds, "rates": len(lrs), "shots": shots, "per_seed_grids_s": timing["baseline_s"],
            "one_batch_s": timing["candidate_s"], "speedup": 1 / timing["ratio"]}


def bench_cpu_matmul(model, repeats: int, n_rows: int = 12, n_tokens: int = 16) -> dict:
    """Frozen float32 linears: the default path (``DUALFORM_CPU_MATMUL=default``) vs oneDNN
    (``=onednn``) on one ``[128, 1024] × [1024, 1024]`` product, on a batched forward of
    ``n_rows`` × ``n_tokens`` tokens, and on 4 steps of a 12-row finetuning grid."""
    from dualform.core.finetune_grid import finetune_kv_rows

    if not onednn_available() or next(model.parameters()).device.type != "cpu":
        return {"available": False}
    tokens = _tokens(model, n_tokens).repeat(n_rows, 1)
    texts = [tokens[0]] * 4
    rows = [(texts, lr) for lr in (0.01, 0.005, 0.001, 0.0005)] * 3
    frozen = load_model_copy(model).requires_grad_(False)
    out = {"available": True, "linear_speedup": measured_speedup(*PROBE_SHAPE)}
    with fast_linears(frozen), torch.no_grad():
        out["forward"] = _paired_settings(lambda: frozen(tokens), repeats)
    with fast_linears(frozen):
        out["grid"] = _paired_settings(lambda: finetune_kv_rows(frozen, rows), max(2, repeats // 2))
    return out


def _paired_settings(fn: Callable[[], object], repeats: int) -> dict:
    def with_setting(value: str) -> Callable[[], object]:
        def run() -> object:
            with cpu_matmul_setting(value):
                return fn()
        return run

    timing = paired(with_setting("default"), with_setting("onednn"), repeats)
    return {"default_s": timing["baseline_s"], "onednn_s": timing["candidate_s"],
            "speedup": 1 / timing["ratio"]}


def _timed_run(config: DaiConfig, keep: Path | None = None) -> dict:
    """One ``run_dai`` from scratch (in a temporary directory, or in ``keep``, which must hold
    no results: a resumed run would time nothing); peak RSS is the process's so far."""
    import tempfile

    if keep is not None and (keep / "results.json").exists():
        raise InvalidArgumentError(f"{keep} already holds results; a timed run starts afresh: "
                                   "give a new directory.")
    with contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory() as out:
        start, cpu = time.perf_counter(), time.process_time()
        res = run_dai(out, config, progress=False)
        return {"total_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                "stages_s": _stage_totals(res), "seeds": config.seeds,
                "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _paired_runs(config: DaiConfig, naive: dict) -> dict:
    """``config`` as is vs with ``naive`` changes, back to back (naive first), and their ratio."""
    out = {"naive": _timed_run(dataclasses.replace(config, **naive)), "shared": _timed_run(config)}
    out["speedup"] = out["naive"]["total_s"] / out["shared"]["total_s"]
    return out


def bench_end_to_end(name: str, device: str | None = None, dtype: str = "float32",
                     config: DaiConfig | None = None, small: DaiConfig | None = None, *,
                     many_seeds: int | None = None, keep: Path | None = None) -> dict:
    """The default ``reproduce dai`` once (every packaged task, 3 seeds, ≤ 200 test examples,
    intervals, untrained baseline, attribution: wall, CPU and stage times) and, with
    ``many_seeds``, the same with that many seeds; then on one task (``small``: 48 test
    examples) two paired comparisons measured in the same run: seeds sharing one finetuning
    batch and one ZSL pass vs each seed on its own (``share_seeds`` off), and prefix reuse +
    batching vs one full forward per query, one run per rate. ``keep``: the default and
    many-seed runs' results stay in ``keep/default`` and ``keep/seeds-N``."""
    cfg = config or DaiConfig(model=name, device=device or "cpu", dtype=dtype)
    small = small or dataclasses.replace(cfg, tasks=cfg.tasks[:1], n_test=48, n_attribution=16)
    out = {"default": _timed_run(cfg, keep and keep / "default")}
    if many_seeds:
        out["many_seeds"] = _timed_run(dataclasses.replace(cfg, seeds=many_seeds),
                                       keep and keep / f"seeds-{many_seeds}")
    out["seed_sharing"] = _paired_runs(small, {"share_seeds": False})
    with cpu_matmul_setting("default"):
        naive = _timed_run(small)
    out["cpu_matmul"] = {"naive": naive, "shared": _timed_run(small)}
    out["cpu_matmul"]["speedup"] = naive["total_s"] / out["cpu_matmul"]["shared"]["total_s"]
    out["reuse"] = _paired_runs(dataclasses.replace(small, seeds=1),
                                {"reuse_prefix": False, "batch_size": 1})
    return out


def _stage_totals(results: DaiResults) -> dict[str, float]:
    totals: dict[str, float] = {}
    for task in results.tasks.values():
        for stage, seconds in task.timing_s.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals


PYTHIA_160M_SHAPE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "rotary_pct": 0.25, "vocab_size": 50304,
                     "max_position_embeddings": 2048}


def pythia_shaped_model(device: str | None = None, *, seed: int = 0, **overrides):
    """A random GPT-NeoX with Pythia-160M's shape (12 layers, d_model 768, 12 heads, rotary on
    25 % of each head), float32, through the same bridge code path as ``load_model``."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from dualform.models.load import byte_tokenizer, resolve_device, wrap_hf_model

    config = GPTNeoXConfig(**{**PYTHIA_160M_SHAPE, **overrides}, bos_token_id=0,
                           eos_token_id=1, pad_token_id=2)
    config.architectures = ["GPTNeoXForCausalLM"]
    with seeded(seed):  # transformers draws from the global RNG
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return wrap_hf_model(hf_model.to(resolve_device(device)), byte_tokenizer(), "pythia-160m-shape")


def bench_pythia_shape(repeats: int, device: str | None = None, **overrides) -> dict:
    """Capture of q, k, v, z, scores (512 tokens) and ``dual_form`` (300 tokens), each vs a bare
    forward, on :func:`pythia_shaped_model`."""
    model = pythia_shaped_model(device, **overrides)
    return {"shape": {**PYTHIA_160M_SHAPE, **overrides},
            "capture": bench_capture(model, repeats, hooks=("q", "k", "v", "z", "attn_scores")),
            "dual_form": bench_dual_form(model, repeats)}


def load_model_copy(model):
    from dualform.models.load import clone_model

    return clone_model(model)


def run_bench(name: str = DEFAULT_MODEL, repeats: int = 5, device: str | None = None,
              end_to_end: bool = False, dtype: str = "float32", pythia_shape: bool = True,
              many_seeds: int | None = None, keep: Path | None = None) -> dict:
    model = load_model(name, device=device, dtype=dtype)
    out = {"model": name, "device": str(next(model.parameters()).device), "dtype": dtype,
           "threads": torch.get_num_threads(), "second_load_s": bench_load(name)}
    out["capture"] = bench_capture(model, repeats)
    out["dual_form"] = bench_dual_form(model, repeats)
    out["finetune"] = bench_finetune_step(model, repeats)
    out["prefix_reuse"] = bench_prefix(model)
    out["shared_prefix"] = bench_shared_prefix(model)
    out["seed_grid"] = bench_seed_grid(model, repeats=max(1, repeats // 2))
    out["cpu_matmul"] = bench_cpu_matmul(model, repeats)
    if pythia_shape:
        out["pythia_shape"] = bench_pythia_shape(repeats, device)
    if end_to_end:
        out["end_to_end"] = bench_end_to_end(name, device, dtype, many_seeds=many_seeds, keep=keep)
    out["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out
