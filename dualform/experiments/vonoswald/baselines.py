"""Tuned baselines: K-step GD with a line-searched η, and GD++ with trained (η_l, γ_l).

* GD: one η shared by all K steps (official ``scan_lrs``: grid 0.001…25 on 10k tasks, W0 = 0).
  Here: a grid over ``[eta_min, eta_max]`` evaluated on a held-out tuning batch, then a
  golden-section refinement inside the bracket around the best grid point.
* GD++: per-step ``η_l`` and ``γ_l`` (see :mod:`dualform.experiments.vonoswald.gd`), trained with Adam on
  fresh tasks every step (official ``pre_train_gd_hps``), initialised at the tuned GD η and γ = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import einsum
from torch import Tensor

from dualform.experiments.vonoswald.data import RegressionBatch, half_mse, sample_tasks
from dualform.experiments.vonoswald.gd import gd_predict, gdpp_predict


@dataclass
class GDTuning:
    """Result of the GD line search for K steps."""

    steps: int
    eta: float
    tune_loss: float


@dataclass
class GDPPTuning:
    """Result of GD++ training for K steps."""

    steps: int
    etas: list[float]
    gammas: list[float]
    tune_loss: float


def gd_loss(batch: RegressionBatch, eta: float, steps: int, w0: Tensor | None = None) -> float:
    """½·MSE of the K-step GD prediction on a batch of tasks."""
    pred, _ = gd_predict(batch.x, batch.y, batch.x_test, eta, steps, w0)
    return half_mse(pred, batch.y_test).item()


def gd_loss_curve(batch: RegressionBatch, etas: Tensor, steps: int, chunk: int = 8) -> Tensor:
    """Loss for every η of a grid (``chunk`` grid values folded into the batch at a time)."""
    return torch.cat(
        [_gd_loss_chunk(batch, etas[i : i + chunk], steps) for i in range(0, len(etas), chunk)]
    )


def _gd_loss_chunk(batch: RegressionBatch, etas: Tensor, steps: int) -> Tensor:
    """K-step GD loss for a few η at once: ``W ← W − η_g ∇L(W)`` on a ``[grid, batch, d]`` tensor."""
    eta = etas.to(batch.x)[:, None, None]
    w = torch.zeros(len(etas), *batch.x_test.shape, dtype=batch.x.dtype, device=batch.x.device)
    for _ in range(steps):
        residual = einsum(batch.x, w, "b n d, g b d -> g b n") - batch.y
        w = w - eta * einsum(residual, batch.x, "g b n, b n d -> g b d") / batch.n
    err = einsum(w, batch.x_test, "g b d, b d -> g b") - batch.y_test
    return 0.5 * err.pow(2).mean(-1)


def golden_section(f, lo: float, hi: float, iters: int = 40) -> float:
    """Minimise a unimodal scalar function on ``[lo, hi]`` by golden-section search."""
    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    return (a + b) / 2


def tune_gd_eta(
    batch: RegressionBatch,
    steps: int,
    *,
    eta_min: float = 0.01,
    eta_max: float = 25.0,
    grid: int = 250,
    refine_iters: int = 40,
) -> GDTuning:
    """Line search for the GD step size η (grid + golden-section refinement) on ``batch``."""
    etas = torch.linspace(eta_min, eta_max, grid, dtype=torch.float64)
    curve = torch.nan_to_num(gd_loss_curve(batch, etas, steps), nan=math.inf)
    i = int(torch.argmin(curve))
    lo, hi = etas[max(i - 1, 0)].item(), etas[min(i + 1, grid - 1)].item()
    eta = golden_section(lambda e: gd_loss(batch, e, steps), lo, hi, refine_iters)
    return GDTuning(steps=steps, eta=eta, tune_loss=gd_loss(batch, eta, steps))


def gdpp_loss(batch: RegressionBatch, etas, gammas) -> Tensor:
    """½·MSE of the GD++ prediction (differentiable in ``etas``/``gammas``)."""
    pred = gdpp_predict(batch.x, batch.y, batch.x_test, etas, gammas)
    return half_mse(pred, batch.y_test)


def tune_gdpp(
    tune_batch: RegressionBatch,
    steps: int,
    eta_init: float,
    *,
    train_steps: int = 1000,
    batch_size: int = 1024,
    lr: float = 0.01,
    x_range: float = 0.5,
    seed: int = 0,
    eval_every: int = 50,
) -> GDPPTuning:
    """Train GD++'s per-step ``(η_l, γ_l)`` with Adam on fresh tasks.

    ``η_l = η_init · exp(a_l)`` (Adam steps are relative changes of η), γ_l raw, both from GD
    (a = γ = 0); lr / 10 for the last quarter. Every ``eval_every`` steps the tuning-batch
    loss is measured and the best parameters are kept, so GD++ never ends worse than its GD
    start (5-step GD++ can blow up on rare ill-conditioned tasks).
    """
    gen = torch.Generator().manual_seed(seed)
    dtype, device = tune_batch.x.dtype, tune_batch.x.device
    log_eta = torch.zeros(steps, dtype=dtype, device=device, requires_grad=True)
    gammas = torch.zeros(steps, dtype=dtype, device=device, requires_grad=True)
    opt = torch.optim.Adam([log_eta, gammas], lr=lr)
    current = lambda: (eta_init * log_eta.exp(), gammas)  # noqa: E731
    best = _evaluate_gdpp(tune_batch, *current())
    for step in range(train_steps):
        if step == (3 * train_steps) // 4:  # last quarter: lr / 10 to settle
            for group in opt.param_groups:
                group["lr"] = lr / 10
        batch = sample_tasks(
            batch_size,
            tune_batch.n,
            tune_batch.d,
            x_range=x_range,
            generator=gen,
            dtype=dtype,
            device=device,
        )
        loss = gdpp_loss(batch, *current())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % eval_every == 0 or step + 1 == train_steps:
            best = min(best, _evaluate_gdpp(tune_batch, *current()), key=lambda t: t[0])
    return GDPPTuning(steps, best[1], best[2], best[0])


def _evaluate_gdpp(
    batch: RegressionBatch, etas: Tensor, gammas: Tensor
) -> tuple[float, list, list]:
    """(tuning loss, η list, γ list); NaN/inf losses rank last."""
    with torch.no_grad():
        loss = gdpp_loss(batch, etas, gammas).item()
    loss = loss if math.isfinite(loss) else math.inf
    return loss, etas.detach().tolist(), gammas.detach().tolist()
