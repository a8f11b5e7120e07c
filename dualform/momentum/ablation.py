"""Inference-time momentum on a pretrained model: ICL accuracy as a function of η.

Dai et al. *train* with momentum; switching it on in a model trained without it is an
out-of-distribution intervention, so this measures how far a pretrained model tolerates the
extra EMA of values (and whether small η helps), not the paper's claim itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from dualform.momentum.attention import momentum_attention
from dualform.probes import hook_name, hooks, n_layers

DEFAULT_ETAS = tuple(round(0.1 * i, 1) for i in range(10))


def left_pad(
    prompts: Sequence[Int[Tensor, " pos"]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Left-pad 1-D token tensors to one batch; returns (tokens, attention_mask)."""
    width = max(int(p.shape[-1]) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        p = p.reshape(-1)
        tokens[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    return tokens, mask


@torch.no_grad()
def label_logits(
    model,
    prompts: Sequence[Int[Tensor, " pos"]],
    label_ids: Sequence[int],
    *,
    eta: float = 0.0,
    batch_size: int = 8,
    pad_id: int = 0,
) -> torch.Tensor:
    """Last-position logits over ``label_ids`` for every prompt, under momentum η (0 = off).

    Prompts are left-padded into batches; the same ``attention_mask`` goes to the forward and to
    :func:`momentum_attention`, so padding enters neither attention nor momentum.
    """
    device = next(model.parameters()).device
    labels = torch.as_tensor(list(label_ids), device=device)
    rows = []
    for start in range(0, len(prompts), batch_size):
        tokens, mask = left_pad(prompts[start : start + batch_size], pad_id)
        tokens, mask = tokens.to(device), mask.to(device)
        with momentum_attention(model, eta, attention_mask=mask), _finite_padding(model, mask):
            logits = model(tokens, attention_mask=mask)
        rows.append(logits[:, -1, labels].float().cpu())
    return torch.cat(rows)


def _finite_padding(model, mask: Tensor):
    """Zero the NaN pattern rows of fully masked (left-padding) queries.

    The TransformerLens 4.3 bridge gives NaN attention rows for padded query positions; the NaN
    then reaches real tokens through ``0 · NaN`` in the next layer. Zeroing those rows changes
    nothing at real positions (their keys are masked anyway).
    """
    if bool(mask.all()):
        return nullcontext()
    names = [hook_name("pattern", layer) for layer in range(n_layers(model))]
    fix = lambda pattern, hook: pattern.nan_to_num(0.0)  # noqa: E731
    return hooks(model, [(name, fix) for name in names if name in model.hook_dict])


def icl_accuracy_vs_eta(
    model,
    prompts_tokens: Sequence[Int[Tensor, " pos"]],
    label_ids: Sequence[int],
    gold: Sequence[int],
    etas: Sequence[float] = DEFAULT_ETAS,
    *,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
) -> dict[float, float]:
    """Accuracy (argmax over the label tokens at the last position) for each η.

    ``prompts_tokens``: already tokenised prompts (1-D, or ``[1, pos]``); ``gold``: label index
    into ``label_ids`` per prompt.
    """
    gold_t = torch.as_tensor(list(gold))
    out = {}
    for eta in tqdm(etas, desc="η", disable=not progress):
        logits = label_logits(model, prompts_tokens, label_ids, eta=float(eta),
                              batch_size=batch_size, pad_id=pad_id)
        out[float(eta)] = float((logits.argmax(-1) == gold_t).float().mean())
    return out


def task_prompts(model, task_name: str, *, k: int, n_queries: int, seed: int = 1):
    """Tokenised ICL prompts (k fixed demos, seed ``seed``) on the first ``n_queries`` test
    examples of a :mod:`dualform.tasks` task, zero-shot prompts, label ids and gold labels."""
    from dualform.tasks import build_prompt, label_token_ids, load_task, prompt_tokens, sample_demos

    task = load_task(task_name)
    demos = sample_demos(task, k, seed)
    queries = task.test[:n_queries]
    icl = [prompt_tokens(model, build_prompt(task, demos, q)).tokens[0].cpu() for q in queries]
    zsl = [prompt_tokens(model, build_prompt(task, [], q)).tokens[0].cpu() for q in queries]
    return icl, zsl, label_token_ids(model, task), [q.label for q in queries]


def run_eta_ablation(
    model,
    task_names: Sequence[str] = ("afinn-sentiment", "country-region"),
    *,
    k: int = 8,
    n_queries: int = 100,
    etas: Sequence[float] = DEFAULT_ETAS,
    seed: int = 1,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """ICL accuracy vs η per task (plus the η = 0 zero-shot accuracy), JSON-ready."""
    pad_id = getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0
    results: dict = {"k": k, "n_queries": n_queries, "demo_seed": seed, "tasks": {}}
    for name in task_names:
        icl, zsl, label_ids, gold = task_prompts(model, name, k=k, n_queries=n_queries, seed=seed)
        acc = icl_accuracy_vs_eta(model, icl, label_ids, gold, etas, batch_size=batch_size,
                                  pad_id=pad_id, progress=progress)
        zero = icl_accuracy_vs_eta(model, zsl, label_ids, gold, (0.0,), batch_size=batch_size,
                                   pad_id=pad_id, progress=False)
        results["tasks"][name] = {
            "icl_accuracy": {f"{e:g}": a for e, a in acc.items()},
            "zsl_accuracy_eta0": zero[0.0],
            "chance": 1.0 / len(label_ids),
            "mean_prompt_tokens": sum(len(p) for p in icl) / len(icl),
        }
    return results
