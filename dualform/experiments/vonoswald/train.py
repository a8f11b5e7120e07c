"""Training LSA Transformers on fresh in-context regression tasks (official ``train.py``).

Every optimiser step draws a new batch of tasks (online learning, official ``cycle_data = 0``);
the forward pass is batched over tasks — no Python loop over tasks. Adam with lr 1e-3 and
``betas = (0.9, 0.98)`` (official ``config.b1/b2``), global-norm gradient clipping (official:
0.001 for ≤ 2 layers, 10 above — Adam makes the value nearly irrelevant), init
``VarianceScaling(0.002 / n_layers)``. Layers are *not* weight-tied (the official notebook's
``recurrent_Transformer=False`` setting for multi-layer models).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from dualform.experiments.vonoswald.data import half_mse, sample_tasks
from dualform.experiments.vonoswald.lsa import LSATransformer, build_lsa
from dualform.infra.reprs import compact_repr
from dualform.infra.rng import seeded


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    n_layers: int = 1
    steps: int = 2000
    batch_size: int = 512  # official: 2048 (use that on a GPU)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 10.0
    d: int = 10
    n: int = 10
    x_range: float = 0.5
    noise: float = 0.0
    n_heads: int = 1
    attn: str = "linear"  # "softmax" for the softmax-attention variant
    mlp: bool = False  # add a GELU MLP after every attention sublayer
    activation_clip: float = 0.0  # official: 10 for > 3 layers (bounds the degree-3^L blow-up)
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    log_every: int = 50


@dataclass
class TrainResult:
    """A trained model and its training curve."""

    model: LSATransformer
    config: TrainConfig
    log_steps: list[int] = field(default_factory=list)
    log_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    __repr__ = compact_repr


def make_model(cfg: TrainConfig) -> LSATransformer:
    """Seeded LSA Transformer for ``cfg`` on ``cfg.device``."""
    with seeded(cfg.seed):
        model = build_lsa(
            cfg.d,
            cfg.n_layers,
            n_heads=cfg.n_heads,
            attn=cfg.attn,
            mlp=cfg.mlp,
            clip=cfg.activation_clip,
        )
    return model.to(device=cfg.device, dtype=cfg.dtype)


def training_loss(model: LSATransformer, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """``½·MSE(−(query y-entry), y_test)`` on a fresh batch of tasks."""
    batch = sample_tasks(
        cfg.batch_size,
        cfg.n,
        cfg.d,
        x_range=cfg.x_range,
        noise=cfg.noise,
        generator=gen,
        dtype=cfg.dtype,
        device=cfg.device,
    )
    return half_mse(model.predict(batch.tokens()), batch.y_test)


def train_lsa(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train an LSA Transformer with Adam on fresh tasks every step; returns model + curve."""
    model = make_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    result, start, running = TrainResult(model=model, config=cfg), time.perf_counter(), 0.0
    bar = tqdm(range(cfg.steps), desc=f"LSA {cfg.n_layers}L", disable=not progress, leave=False)
    for step in bar:
        loss = training_loss(model, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running += loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            count = (step % cfg.log_every) + 1
            result.log_steps.append(step + 1)
            result.log_losses.append(running / count)
            bar.set_postfix(loss=f"{running / count:.4f}")
            running = 0.0
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
