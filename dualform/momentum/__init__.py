"""Momentum attention (Dai et al. 2023, §5): drop-in hooks, a trainable twin, the experiment."""

from dualform.momentum.attention import (
    decay_matrix,
    eta_per_head,
    head_momentum,
    momentum_attention,
    momentum_term,
)

__all__ = [
    "decay_matrix",
    "eta_per_head",
    "head_momentum",
    "momentum_attention",
    "momentum_term",
]
