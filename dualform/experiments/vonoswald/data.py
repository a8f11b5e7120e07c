"""In-context linear regression tasks of von Oswald et al. (2023), §2 and official ``src/data.py``.

Each task draws a teacher ``w ~ N(0, I_d)``, ``N`` context inputs and one query input
``x ~ U(−x_range, x_range)^d`` and targets ``y = w·x`` (plus optional Gaussian label noise on the
context targets only; the query target stays clean). ``x_range=0.5`` is what the official code
uses (``input_range=1`` → ``U(−0.5, 0.5)``); the paper's text says ``U(−1, 1)`` (``x_range=1``).

Tokens are ``e_j = (x_j, y_j) ∈ R^{d+1}`` for the context and ``(x_test, −W0 x_test)`` for the
query — ``(x_test, 0)`` for the default ``W0 = 0``. After the layers, the prediction is read as
minus the y-entry of the query token, and the loss is ``½·mean squared error`` (official
``compute_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor

from dualform.infra.reprs import compact_repr


@dataclass
class RegressionBatch:
    """A batch of independent regression tasks (all tensors share batch, dtype and device)."""

    x: Float[Tensor, "batch n d"]
    y: Float[Tensor, "batch n"]
    x_test: Float[Tensor, "batch d"]
    y_test: Float[Tensor, " batch"]
    w: Float[Tensor, "batch d"]

    __repr__ = compact_repr

    @property
    def n(self) -> int:
        """Number of context pairs N."""
        return self.x.shape[1]

    @property
    def d(self) -> int:
        """Input dimension d."""
        return self.x.shape[2]

    def tokens(self, w0: Tensor | None = None) -> Float[Tensor, "batch n_plus_1 d_plus_1"]:
        """Token tensor ``[batch, N+1, d+1]`` (see :func:`make_tokens`)."""
        return make_tokens(self.x, self.y, self.x_test, w0=w0)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Copy of the batch on another device / dtype."""
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return RegressionBatch(
            *(move(t) for t in (self.x, self.y, self.x_test, self.y_test, self.w))
        )


def sample_tasks(
    batch: int,
    n: int,
    d: int,
    *,
    x_range: float = 0.5,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RegressionBatch:
    """Sample ``batch`` tasks: ``w ~ N(0, I_d)``, ``x ~ U(−x_range, x_range)^d``, ``y = w·x (+ σε)``.

    Random numbers are drawn on the generator's device (CPU by default) in float64 and then
    moved to ``device`` / ``dtype``, so a seed gives the same tasks on every device and dtype.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    opts = dict(generator=generator, device=gen_device, dtype=torch.float64)
    w = torch.randn(batch, d, **opts)
    x_all = (torch.rand(batch, n + 1, d, **opts) * 2.0 - 1.0) * x_range
    y_all = einsum(x_all, w, "b p d, b d -> b p")
    y_noise = noise * torch.randn(batch, n, **opts) if noise > 0 else 0.0
    out = RegressionBatch(
        x=x_all[:, :n], y=y_all[:, :n] + y_noise, x_test=x_all[:, n], y_test=y_all[:, n], w=w
    )
    return out.to(device=device, dtype=dtype)


def make_tokens(
    x: Float[Tensor, "batch n d"],
    y: Float[Tensor, "batch n"],
    x_test: Float[Tensor, "batch d"],
    w0: Tensor | None = None,
) -> Float[Tensor, "batch n_plus_1 d_plus_1"]:
    """Token layout ``e_j = (x_j, y_j)`` for j ≤ N and query ``e_{N+1} = (x_test, −W0 x_test)``.

    With ``W0 = 0`` (default) the query token is ``(x_test, 0)`` as in the paper. The
    ``−W0 x_test`` start makes ``−(query y-entry)`` equal ``W x_test`` for the current model W
    at every layer of the GD construction (see :mod:`dualform.experiments.vonoswald.gd`).
    """
    query_y = -initial_prediction(x_test, w0)
    context = torch.cat([x, rearrange(y, "b n -> b n 1")], dim=-1)
    query = torch.cat([x_test, rearrange(query_y, "b -> b 1")], dim=-1)
    return torch.cat([context, rearrange(query, "b e -> b 1 e")], dim=1)


def initial_prediction(
    x_test: Float[Tensor, "batch d"], w0: Tensor | None
) -> Float[Tensor, " batch"]:
    """``W0 x_test`` for ``w0`` of shape ``[d]`` or ``[batch, d]`` (zeros when ``w0`` is None)."""
    if w0 is None:
        return torch.zeros(x_test.shape[0], dtype=x_test.dtype, device=x_test.device)
    w0 = w0.to(x_test).expand_as(x_test)
    return einsum(w0, x_test, "b d, b d -> b")


def read_prediction(tokens: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, " batch"]:
    """Prediction ``ŷ = −e_{N+1}[-1]``: minus the y-entry of the last (query) token."""
    return -tokens[:, -1, -1]


def half_mse(pred: Float[Tensor, " batch"], target: Float[Tensor, " batch"]) -> Float[Tensor, ""]:
    """Loss ``L = ½ · mean_b (ŷ_b − y_b)²`` (official ``compute_loss``)."""
    return 0.5 * (pred - target).pow(2).mean()
