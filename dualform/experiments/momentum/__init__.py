"""Momentum attention (Dai et al. 2023, §5): drop-in hooks, a trainable twin, the experiment.

* :func:`momentum_attention` — context manager: any TransformerBridge / TL model gets
  ``z_t += Σ_{i<t} η^{t−i} v_i`` (equation: :func:`momentum_term`).
* :class:`MomentumLM` — TransformerLens-native trainable LM with (learnable) momentum.
* :func:`run_momentum` — vanilla vs momentum twins from scratch (:class:`MomentumConfig`).
* :func:`momentum_dual_form` — the dual form with the momentum meta-gradient pieces.
* :func:`icl_accuracy_vs_eta` / :func:`run_eta_ablation` — inference-time η on a pretrained model.

    functional.py   the trainable model's attention pieces, one equation each (rotary, scores, SDPA)
    model.py        MomentumLM: a TransformerLens-native LM with (learnable) momentum
    data.py         offline training and in-context recall data, ICL prompts (explicit generators)
    train.py        training loop and evaluation (perplexity by context, ICL correctness)
    experiment.py   run_momentum: vanilla vs momentum twins over seeds, resumable
    summary.py      paired momentum − vanilla differences with intervals, failure rates, verdict
    ablation.py     inference-time η on a pretrained model (ICL accuracy vs η)

The equations (``momentum_term``, ``momentum_attention``) live in :mod:`dualform.core.momentum`,
the dual form with momentum in :mod:`dualform.core.momentum_dual`, the figures in
:mod:`dualform.viz.momentum`.
"""

from dualform.core.momentum import (
    decay_matrix,
    eta_per_head,
    head_momentum,
    momentum_attention,
    momentum_term,
)
from dualform.core.momentum_dual import MomentumDualForm, momentum_dual_form, momentum_split
from dualform.experiments.momentum.ablation import icl_accuracy_vs_eta, run_eta_ablation
from dualform.experiments.momentum.experiment import MomentumConfig, run_momentum
from dualform.experiments.momentum.model import MomentumLM, MomentumLMConfig

__all__ = [
    "MomentumConfig",
    "MomentumDualForm",
    "MomentumLM",
    "MomentumLMConfig",
    "decay_matrix",
    "eta_per_head",
    "head_momentum",
    "icl_accuracy_vs_eta",
    "momentum_attention",
    "momentum_dual_form",
    "momentum_split",
    "momentum_term",
    "run_eta_ablation",
    "run_momentum",
]
