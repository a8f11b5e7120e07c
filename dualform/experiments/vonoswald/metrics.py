"""Comparison metrics between a trained Transformer and GD (official ``analyse`` / ``ood``).

* loss: ½·MSE on held-out tasks;
* preds diff: ``mean_b |ŷ_TF − ŷ_GD|`` (official ``pred_norm``);
* model cos / model diff: cosine and L2 distance between the implied linear models
  ``∂ŷ/∂x_test`` of the Transformer and of GD, averaged over tasks (official ``dot`` / ``norm``);
* OOD: loss when the test-time input range is scaled by α (official ``stretch_i`` 0.5…2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from dualform.experiments.vonoswald.data import RegressionBatch, half_mse, sample_tasks
from dualform.experiments.vonoswald.gd import gd_predict, gdpp_predict

Predictor = Callable[[Tensor], Tensor]


def implied_linear_model(
    predict: Predictor, tokens: Float[Tensor, "batch pos d_model"], w0: Tensor | None = None
) -> Float[Tensor, "batch d"]:
    """``dŷ_b/dx_test,b`` for every task b in one backward pass.

    Tasks do not interact, so the gradient of ``Σ_b ŷ_b`` w.r.t. the query token of task b is
    task b's own Jacobian row — the whole batch is differentiated at once (vectorised). With
    ``w0`` the query's y-entry ``−W0 x_test`` also depends on x_test (chain rule term).
    """
    tokens = tokens.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(predict(tokens).sum(), tokens)
    jac = grad[:, -1, :-1]
    return jac if w0 is None else jac - grad[:, -1, -1:] * w0.to(jac)


def model_cosine(
    a: Float[Tensor, "batch d"], b: Float[Tensor, "batch d"], eps: float = 1e-8
) -> Float[Tensor, ""]:
    """``mean_b cos(a_b, b_b)`` (official: ``+1e-8`` in the norms)."""
    a_unit = a / (a.norm(dim=-1, keepdim=True) + eps)
    b_unit = b / (b.norm(dim=-1, keepdim=True) + eps)
    return (a_unit * b_unit).sum(-1).mean()


def model_difference(a: Float[Tensor, "batch d"], b: Float[Tensor, "batch d"]) -> Float[Tensor, ""]:
    """``mean_b ‖a_b − b_b‖₂``."""
    return (a - b).norm(dim=-1).mean()


def preds_difference(a: Float[Tensor, " batch"], b: Float[Tensor, " batch"]) -> Float[Tensor, ""]:
    """``mean_b |ŷ_a − ŷ_b|``."""
    return (a - b).abs().mean()


def compare_to_gd(
    model: torch.nn.Module, batch: RegressionBatch, eta: float, steps: int
) -> dict[str, float]:
    """Loss, preds diff, model cos and model diff of ``model`` against K-step GD (W0 = 0)."""
    tokens = batch.tokens()
    with torch.no_grad():
        pred_tf = model.predict(tokens)
    pred_gd, w_gd = gd_predict(batch.x, batch.y, batch.x_test, eta, steps)
    w_tf = implied_linear_model(model.predict, tokens)
    return {
        "loss_tf": half_mse(pred_tf, batch.y_test).item(),
        "loss_gd": half_mse(pred_gd, batch.y_test).item(),
        "preds_diff": preds_difference(pred_tf, pred_gd).item(),
        "model_cos": model_cosine(w_tf, w_gd).item(),
        "model_diff": model_difference(w_tf, w_gd).item(),
    }


def ood_losses(
    predictors: dict[str, Predictor],
    alphas: Sequence[float],
    *,
    n: int,
    d: int,
    x_range: float,
    batch_size: int,
    seed: int = 123,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> dict[str, list[float]]:
    """Loss of each predictor (tokens → ŷ) on tasks with inputs ``U(−α·x_range, α·x_range)``."""
    out: dict[str, list[float]] = {name: [] for name in predictors}
    for alpha in alphas:
        gen = torch.Generator().manual_seed(seed)
        batch = sample_tasks(
            batch_size, n, d, x_range=alpha * x_range, generator=gen, dtype=dtype, device=device
        )
        tokens = batch.tokens()
        for name, predict in predictors.items():
            with torch.no_grad():
                out[name].append(half_mse(predict(tokens), batch.y_test).item())
    return out


def gd_predictor(eta: float, steps: int) -> Predictor:
    """Tokens → K-step GD prediction (W0 = 0), reading x, y, x_test off the token layout."""

    def predict(tokens: Tensor) -> Tensor:
        x, y, x_test = tokens[:, :-1, :-1], tokens[:, :-1, -1], tokens[:, -1, :-1]
        return gd_predict(x, y, x_test, eta, steps)[0]

    return predict


def gdpp_predictor(etas: list[float], gammas: list[float]) -> Predictor:
    """Tokens → GD++ prediction."""

    def predict(tokens: Tensor) -> Tensor:
        x, y, x_test = tokens[:, :-1, :-1], tokens[:, :-1, -1], tokens[:, -1, :-1]
        return gdpp_predict(x, y, x_test, etas, gammas)

    return predict
