"""Training and evaluation loops for :class:`~dualform.experiments.momentum.model.MomentumLM` twins."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from dualform.experiments.momentum.data import PAD
from dualform.infra.reprs import compact_repr


def next_token_nll(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """``−log p(x_{t+1} | x_≤t)`` per predicted position (PAD targets give 0)."""
    targets = tokens[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    return nll * (targets != PAD)


def lm_loss(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """Mean next-token cross-entropy over non-PAD targets."""
    nll = next_token_nll(model(tokens), tokens)
    return nll.sum() / (tokens[:, 1:] != PAD).sum().clamp(min=1)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10 % of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainLog:
    """Loss per step, η per logged step (learnable η), wall and CPU time of this process."""

    losses: list[float] = field(default_factory=list)
    etas: list[list[list[float]]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    __repr__ = compact_repr


def train_lm(
    model,
    batches: Callable[[int], Tensor],
    *,
    steps: int,
    lr: float = 3e-3,
    warmup: int = 30,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "train",
) -> TrainLog:
    """AdamW on ``batches(step)`` (token tensors) for ``steps`` steps; returns the loss curve."""
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98),
    )
    log, start, cpu_start = TrainLog(), time.perf_counter(), time.process_time()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = lm_loss(model, batches(step).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        log.losses.append(float(loss.detach()))
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{log.losses[-1]:.3f}")
            if hasattr(model, "etas"):
                log.etas.append(model.etas().tolist())
    log.seconds = time.perf_counter() - start
    log.cpu_seconds = time.process_time() - cpu_start
    model.eval()
    return log


@torch.no_grad()
def perplexity(
    model, windows: Int[Tensor, "n ctx"], *, batch_size: int = 64, device="cpu"
) -> float:
    """``exp(mean NLL)`` over every predicted token of the windows (each its own context)."""
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        nll = next_token_nll(model(chunk), chunk)
        total += float(nll.sum())
        count += int((chunk[:, 1:] != PAD).sum())
    return math.exp(total / max(count, 1))


@torch.no_grad()
def icl_correct(
    model,
    prompts: Int[Tensor, "n pos"],
    gold: Int[Tensor, " n"],
    label_ids: Int[Tensor, " n_labels"] | tuple[int, ...],
    *,
    batch_size: int = 128,
    device="cpu",
) -> Bool[Tensor, " n"]:
    """Per prompt: is the last-position argmax over ``label_ids`` the gold label?"""
    labels = torch.as_tensor(label_ids).to(device)
    rows = []
    for p_chunk, g_chunk in zip(prompts.split(batch_size), gold.split(batch_size), strict=True):
        logits = model(p_chunk.to(device))[:, -1, labels]
        rows.append((labels[logits.argmax(-1)] == g_chunk.to(device)).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.bool)


def icl_accuracy(model, prompts, gold, label_ids, **kwargs) -> float:
    """Share (fraction in [0, 1]) of prompts answered correctly: mean of :func:`icl_correct`."""
    correct = icl_correct(model, prompts, gold, label_ids, **kwargs)
    return float(correct.float().mean()) if len(correct) else 0.0
