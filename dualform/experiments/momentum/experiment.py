"""Vanilla vs momentum twins trained from scratch (Dai et al. 2023, §5), scaled down.

:func:`run_momentum` trains, for every seed, a vanilla model and its momentum twin (same initial
weights, data stream, architecture and steps), plus an η sweep (and a learned-η twin) at the
first seed, and reports perplexity at several context lengths and in-context-learning accuracy
as paired ``momentum − vanilla`` differences with 95 % intervals, the training-failure rate per
arm, and the paper's numbers (:mod:`dualform.experiments.momentum.summary`). See
:mod:`dualform.experiments.momentum.data` for the data (a real text corpus when reachable, else
the offline in-context associative-recall corpus). Runs go through
:class:`dualform.infra.executors.LocalExecutor` (``workers`` processes). Every random draw comes
from an explicit ``torch.Generator``: initial weights from ``seed``, training batches from
``10_000 + seed`` (the same for both twins of a seed), evaluation data from fixed seeds.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from dualform.errors import InvalidArgumentError
from dualform.experiments.momentum.data import demo_counts, make_source
from dualform.experiments.momentum.model import MomentumLM, MomentumLMConfig
from dualform.experiments.momentum.summary import summarise
from dualform.experiments.momentum.train import icl_correct, perplexity, train_lm
from dualform.infra.executors import LocalExecutor
from dualform.infra.io import as_stored, read_json, write_json_atomic

PAPER = {
    "model": "350M-parameter LMs trained from scratch (fairseq), vanilla vs momentum attention",
    "context_lengths": [256, 512, 1024],
    "perplexity": {"vanilla": [19.50, 16.87, 15.14], "momentum": [19.37, 16.73, 15.02]},
    "icl_accuracy": {"vanilla": 0.519, "momentum": 0.547},  # fractions (paper: 51.9 %, 54.7 %)
    "eta": "not stated",
}


@dataclass
class MomentumConfig:
    """Experiment settings. Defaults: the offline CPU run (2 training processes × 1 thread).

    η: the paper does not state it. ``eta=None`` (default) trains one momentum twin per η of
    ``eta_sweep`` at the first seed, picks the η with the lowest *validation* perplexity
    (longest context; held-out data disjoint from the test data), then trains momentum twins at
    that η for the other seeds — the way one would tune a hyper-parameter. A float fixes η.

    Scaled down from the paper: a 2-layer attention-only d_model 64 model instead of 350M
    parameters, training length 64 instead of 1024, so perplexity is reported at 16/32/64
    tokens (paper 256/512/1024, the same ratios). 4000 steps because on the recall data small
    models sit on a loss plateau until an induction circuit forms (vanilla: between ≈ 1300 and
    3500 steps here, seed-dependent); fewer steps compare two untrained models.

    Cost (``python analyses/bench_momentum.py --per-seed``): one run (4000 steps of 32 × 64
    tokens, evaluation < 1 CPU-s) ≈ 67 CPU-s vanilla, 81 CPU-s momentum on one core (≈ 80 on a
    loaded machine), so ≈ 150 CPU-s per seed; 8 seeds + 3 extra sweep twins = 19 runs ≈ 1,400–
    1,600 CPU-s ≈ 12–13 min on 2 free cores. :meth:`gpu` is a bigger setting.
    """

    corpus: str = "auto"  # auto | recall | tinystories | wikitext103 | path/to/text.txt
    seeds: tuple[int, ...] = tuple(range(8))
    eta: float | None = None  # None: chosen from eta_sweep on validation perplexity
    eta_sweep: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)  # twins at seeds[0]
    learned_eta: bool = False  # also a twin with learnable per-head η (init eta) at seeds[0]
    steps: int = 4000
    batch_size: int = 32
    seq_len: int = 64
    context_lengths: tuple[int, ...] = (16, 32, 64)
    lr: float = 3e-3
    warmup: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_key_value_heads: int | None = None
    attn_only: bool = True
    n_keys: int = 8
    n_values: int = 8
    icl_demos: tuple[int, ...] = (2, 4, 8)
    n_icl_prompts: int = 1000
    n_eval_tokens: int = 65_536
    device: str = "cpu"
    threads: int = 1  # torch threads per training process (1 is fastest for tiny models)
    workers: int = 2  # training processes in parallel
    save_models: bool = False
    write_png: bool = True  # PNG next to each HTML figure (needs kaleido + Chrome)

    @classmethod
    def gpu(cls, device: str = "cuda") -> MomentumConfig:
        """A bigger run for one GPU: TinyStories (if reachable), context 1024, 8×512 model.

        Perplexity at 256/512/1024 as in the paper; 8 seeds × 2 twins + 4 extra sweep η + the
        learned-η twin = 21 runs, many hours on one modern GPU (not run here: no GPU).
        """
        return cls(
            corpus="tinystories", steps=20_000, batch_size=32, seq_len=1024,
            context_lengths=(256, 512, 1024), lr=6e-4, warmup=1000, d_model=512, n_layers=8,
            n_heads=8, n_keys=26, n_values=10, icl_demos=(4, 8, 16), n_icl_prompts=2000,
            n_eval_tokens=1_048_576, device=device, threads=8, workers=1, save_models=True,
            attn_only=False, learned_eta=True, eta_sweep=(0.003, 0.01, 0.03, 0.1, 0.3),
        )

    @classmethod
    def tiny(cls) -> MomentumConfig:
        """A few-second smoke configuration (tests)."""
        return cls(
            corpus="recall", seeds=(0, 1), eta_sweep=(0.5, 0.9), learned_eta=False, steps=30,
            batch_size=8, seq_len=32, context_lengths=(16, 32), d_model=32, n_heads=2,
            n_keys=4, n_values=4, icl_demos=(2, 4), n_icl_prompts=64, n_eval_tokens=1024,
            workers=1, lr=1e-2, warmup=5, write_png=False,
        )


@dataclass(frozen=True)
class Job:
    """One training run."""

    variant: str  # vanilla | momentum | sweep | learned
    eta: float
    seed: int
    learn_eta: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


def jobs_for(config: MomentumConfig) -> list[Job]:
    """First phase: vanilla at every seed; the η sweep (and, for a fixed η, its twins)."""
    first = config.seeds[0]
    jobs = [Job("vanilla", 0.0, seed) for seed in config.seeds]
    if config.eta is not None:
        jobs += [Job("momentum", config.eta, seed) for seed in config.seeds]
        if config.learned_eta:
            jobs.append(Job("learned", config.eta, first, learn_eta=True))
    jobs += [Job("sweep", eta, first) for eta in config.eta_sweep if eta != config.eta]
    return jobs


def second_phase(config: MomentumConfig, eta: float) -> list[Job]:
    """After choosing η on validation: momentum twins at the other seeds (and learned η)."""
    if config.eta is not None:
        return []
    jobs = [Job("momentum", eta, seed) for seed in config.seeds[1:]]
    if config.learned_eta:
        jobs.append(Job("learned", eta, config.seeds[0], learn_eta=True))
    return jobs


def select_eta(config: MomentumConfig, records: list[dict]) -> tuple[float, dict[str, float]]:
    """η of the sweep (first seed) with the lowest validation perplexity; ties → smaller η.

    Relabels that sweep run as the first seed's ``momentum`` twin. Returns (η, candidates).
    """
    if config.eta is not None:
        return config.eta, {}
    sweep = [r for r in records if r["variant"] == "sweep"]
    candidates = {f"{r['eta']:g}": r["validation_perplexity"] for r in sweep}
    best = min(sweep, key=lambda r: (r["validation_perplexity"], r["eta"]))
    best["variant"] = "momentum"
    return best["eta"], candidates


def model_config(config: MomentumConfig, job: Job, d_vocab: int) -> MomentumLMConfig:
    return MomentumLMConfig(
        d_vocab=d_vocab, n_ctx=config.seq_len, d_model=config.d_model, n_layers=config.n_layers,
        n_heads=config.n_heads, n_key_value_heads=config.n_key_value_heads,
        attn_only=config.attn_only, eta=job.eta, learn_eta=job.learn_eta, seed=job.seed,
    )


def run_job(config: MomentumConfig, job: Job, out_dir: str, progress: bool = False) -> dict:
    """Train one model and evaluate it in ``config.threads`` torch threads; a JSON-ready record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        return train_and_evaluate(config, job, out_dir, progress)
    finally:
        torch.set_num_threads(threads)


def train_and_evaluate(config: MomentumConfig, job: Job, out_dir: str, progress: bool) -> dict:
    """Initial weights from ``seed``, batches from ``10_000 + seed``: the twins share both."""
    source, _ = make_source(config.corpus, config.n_keys, config.n_values)
    init = torch.Generator().manual_seed(job.seed)
    model = MomentumLM(model_config(config, job, source.d_vocab), generator=init)
    data = torch.Generator().manual_seed(10_000 + job.seed)
    log = train_lm(
        model, lambda step: source.train_batch(config.batch_size, config.seq_len, data),
        steps=config.steps, lr=config.lr, warmup=config.warmup, device=config.device,
        progress=progress, desc=f"{job.variant} η={job.eta:g} seed={job.seed}",
    )
    ppl = {
        str(ctx): perplexity(model, source.eval_windows(ctx, config.n_eval_tokens), device=config.device)
        for ctx in config.context_lengths
    }
    longest = config.context_lengths[-1]
    windows = source.eval_windows(longest, config.n_eval_tokens, split="validation")
    validation = perplexity(model, windows, device=config.device)
    correct = {}
    for n_demos in demo_counts(config.icl_demos, source.spec):
        prompts, gold = source.icl_prompts(config.n_icl_prompts, n_demos)
        correct[str(n_demos)] = icl_correct(
            model, prompts, gold, source.spec.value_ids, device=config.device
        ).tolist()
    icl = {d: statistics.fmean(c) for d, c in correct.items()}
    if config.save_models:
        model.save(Path(out_dir) / "models" / f"{job.variant}-eta{job.eta:g}-seed{job.seed}")
    return {
        **asdict(job), "perplexity": ppl, "validation_perplexity": validation,
        "icl_accuracy": icl, "icl_correct": correct,
        "icl_mean": statistics.fmean(icl.values()) if icl else float("nan"),
        "initial_loss": statistics.fmean(log.losses[:5]),
        "final_loss": statistics.fmean(log.losses[-20:]), "train_seconds": log.seconds,
        "train_cpu_seconds": log.cpu_seconds,
        "losses": log.losses, "learned_etas": model.etas().tolist() if job.learn_eta else None,
    }


def run_momentum(
    out_dir: str | Path, *, config: MomentumConfig | None = None, progress: bool = True
) -> dict:
    """Train vanilla/momentum twins, evaluate, write ``out_dir/results.json`` and figures."""
    from dualform.viz.momentum import write_figures

    config = config or MomentumConfig()
    if len(config.seeds) < 2:
        raise InvalidArgumentError("the momentum experiment needs at least 2 seeds for paired intervals")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source, notes = make_source(config.corpus, config.n_keys, config.n_values)
    config = replace(config, corpus=source.name)  # workers reuse the resolved source
    records = run_jobs(config, jobs_for(config), str(out), progress)
    eta, candidates = select_eta(config, records)
    records += run_jobs(config, second_phase(config, eta), str(out), progress)
    chance = 1.0 / len(source.spec.value_ids)
    results = summarise(config, records, PAPER, chance)
    results["eta_selection"] = {
        "eta": eta,
        "method": "fixed by the config" if config.eta is not None else (
            f"lowest validation perplexity at context {config.context_lengths[-1]} "
            f"(seed {config.seeds[0]}, validation data disjoint from the reported test data)"
        ),
        "validation_perplexity": candidates,
    }
    results["data"] = {"source": source.name, "notes": notes, "d_vocab": source.d_vocab}
    results["cost"] = run_cost(records, time.perf_counter() - start, config)
    results["figures"] = write_figures(out, results, png=config.write_png)
    results["wall_seconds"] = time.perf_counter() - start
    write_json_atomic(out / "results.json", results)
    return results


def run_cost(records: list[dict], wall: float, config: MomentumConfig) -> dict:
    """CPU-seconds of training per run and per seed (both twins), and the run's wall time."""
    cpu = [r["train_cpu_seconds"] for r in records]
    twins = [r["train_cpu_seconds"] for r in records if r["variant"] in ("vanilla", "momentum")]
    return {
        "runs": len(records), "train_cpu_seconds": sum(cpu),
        "train_cpu_seconds_per_run": statistics.fmean(cpu),
        "train_cpu_seconds_per_seed": 2 * statistics.fmean(twins),
        "wall_seconds_before_figures": wall, "workers": config.workers,
    }


def run_jobs(config: MomentumConfig, jobs: list[Job], out_dir: str, progress: bool) -> list[dict]:
    """Run the jobs through a :class:`LocalExecutor` (``config.workers`` processes); job order kept.

    Each finished run is saved to ``out_dir/runs/`` at once and reused by a rerun with the same
    settings and code (:func:`code_fingerprint`), so a killed experiment resumes. A failed run
    stops the experiment (a pair without its twin would bias the comparison).
    """
    done = {job: record for job in jobs if (record := load_run(config, job, out_dir)) is not None}
    todo = [job for job in jobs if job not in done]
    executor = LocalExecutor(progress=progress, workers=config.workers)
    task = partial(run_job, config, out_dir=out_dir, progress=progress and config.workers <= 1)
    for job, record, error in executor.map(task, todo):
        if error is not None:
            raise RuntimeError(
                f"momentum run {job.variant} η={job.eta:g} seed={job.seed} failed: {error}"
            ) from error
        write_json_atomic(run_path(job, out_dir), {"settings": run_settings(config), "record": record})
        done[job] = record
    return [done[job] for job in jobs]


def run_path(job: Job, out_dir: str | Path) -> Path:
    learn = "-learned" if job.learn_eta else ""
    return Path(out_dir) / "runs" / f"eta{job.eta:g}{learn}-seed{job.seed}.json"


RUN_CODE = ("core/momentum.py", "experiments/momentum/model.py", "experiments/momentum/functional.py",
            "experiments/momentum/data.py", "experiments/momentum/train.py",
            "experiments/momentum/experiment.py")


def code_fingerprint() -> str:
    """SHA-256 of the sources that decide a run's numbers, and the torch version.

    A saved run is reused only when this matches, so code edits never mix old and new runs.
    """
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256(torch.__version__.encode())
    for name in RUN_CODE:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def run_settings(config: MomentumConfig) -> dict:
    """What a saved run depends on: the config (not seeds, sweep, workers, output) and the code."""
    skip = {"seeds", "eta", "eta_sweep", "learned_eta", "workers", "save_models", "write_png"}
    settings = {k: v for k, v in asdict(config).items() if k not in skip}
    return as_stored({**settings, "code": code_fingerprint()})


def load_run(config: MomentumConfig, job: Job, out_dir: str) -> dict | None:
    """The saved record of ``job`` if it was trained with the same settings, else ``None``."""
    saved = read_json(run_path(job, out_dir))
    if saved is None or saved.get("settings") != run_settings(config):
        return None
    return {**saved["record"], "variant": job.variant}  # a sweep run may become "momentum"
