"""Inference-time momentum on a pretrained model: ICL accuracy as a function of η.

Dai et al. *train* with momentum; switching it on in a model trained without it is an
out-of-distribution intervention, so this measures how far a pretrained model tolerates the
extra EMA of values (and whether small η helps), not the paper's claim itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from dualform.core import metrics as M
from dualform.core.momentum import momentum_attention
from dualform.core.prefix import pad_tokens
from dualform.experiments.stats import mean_std
from dualform.models.compat import finite_padding_patterns

DEFAULT_ETAS = tuple(round(0.1 * i, 1) for i in range(10))


def left_pad(
    prompts: Sequence[Int[Tensor, " _pos"]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Left-pad 1-D token tensors to one batch; returns (tokens, attention_mask)."""
    tokens, mask = pad_tokens(prompts, pad_id, side="left")
    return tokens, mask.long()


@torch.no_grad()
def label_logits(
    model,
    prompts: Sequence[Int[Tensor, " _pos"]],
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
        with momentum_attention(model, eta, attention_mask=mask), finite_padding_patterns(model, mask):
            logits = model(tokens, attention_mask=mask)
        rows.append(logits[:, -1, labels].float().cpu())
    return torch.cat(rows)


def predictions_vs_eta(
    model,
    prompts_tokens: Sequence[Int[Tensor, " _pos"]],
    label_ids: Sequence[int],
    etas: Sequence[float] = DEFAULT_ETAS,
    *,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: bool = True,
) -> dict[float, Int[Tensor, " n"]]:
    """Predicted label index (argmax over ``label_ids`` at the last position) per prompt and η."""
    out = {}
    for eta in tqdm(etas, desc="η", disable=not progress):
        logits = label_logits(model, prompts_tokens, label_ids, eta=float(eta),
                              batch_size=batch_size, pad_id=pad_id)
        out[float(eta)] = logits.argmax(-1)
    return out


def icl_accuracy_vs_eta(
    model,
    prompts_tokens: Sequence[Int[Tensor, " _pos"]],
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
    preds = predictions_vs_eta(model, prompts_tokens, label_ids, etas, batch_size=batch_size,
                               pad_id=pad_id, progress=progress)
    return {eta: accuracy(p, gold) for eta, p in preds.items()}


def accuracy(preds: Tensor, gold: Sequence[int]) -> float:
    """Share of ``preds == gold`` (a fraction, as the momentum experiment reports accuracies:
    :func:`dualform.core.metrics.accuracy`, in percent as Dai et al.'s tables, divided by 100)."""
    return M.accuracy(preds.cpu().numpy(), list(gold)) / 100.0


def task_prompts(model, task_name: str, *, k: int, n_queries: int, seed: int = 1):
    """Tokenised ICL prompts (k fixed demos, seed ``seed``) on the first ``n_queries`` test
    examples of a :mod:`dualform.tasks.prompts` task, zero-shot prompts, label ids and gold labels."""
    from dualform.tasks.prompts import (
        build_prompt,
        label_token_ids,
        load_task,
        prompt_tokens,
        sample_demos,
    )

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
    demo_seeds: Sequence[int] = (1, 2, 3),
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """ICL accuracy vs η per task, mean ± std over demonstration sets, JSON-ready.

    Also the zero-shot accuracy (η = 0) and, per η, the share of each predicted label (a label
    bias shows up there).
    """
    pad_id = getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0
    results: dict = {"k": k, "n_queries": n_queries, "demo_seeds": list(demo_seeds), "tasks": {}}
    for name in task_names:
        per_seed, shares = [], []
        for seed in demo_seeds:
            icl, zsl, label_ids, gold = task_prompts(model, name, k=k, n_queries=n_queries,
                                                     seed=seed)
            preds = predictions_vs_eta(model, icl, label_ids, etas, batch_size=batch_size,
                                       pad_id=pad_id, progress=progress)
            per_seed.append({f"{e:g}": accuracy(p, gold) for e, p in preds.items()})
            shares.append({f"{e:g}": _label_shares(p, len(label_ids)) for e, p in preds.items()})
        zero = predictions_vs_eta(model, zsl, label_ids, (0.0,), batch_size=batch_size,
                                  pad_id=pad_id, progress=False)[0.0]
        results["tasks"][name] = {
            "icl_accuracy": {e: mean_std([s[e] for s in per_seed]) for e in per_seed[0]},
            "icl_accuracy_per_seed": per_seed,
            "predicted_label_share_per_seed": shares,
            "zsl_accuracy_eta0": accuracy(zero, gold),
            "chance": 1.0 / len(label_ids),
            "n_queries": len(gold),
            "mean_prompt_tokens": sum(len(p) for p in icl) / len(icl),
        }
    return results


def _label_shares(preds: Tensor, n_labels: int) -> list[float]:
    return (torch.bincount(preds, minlength=n_labels).double() / max(len(preds), 1)).tolist()

