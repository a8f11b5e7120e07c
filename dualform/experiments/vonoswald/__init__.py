"""von Oswald et al. (2023), "Transformers learn in-context by gradient descent", in PyTorch.

Linear self-attention (LSA) on in-context linear regression tokens, the exact GD construction,
tuned GD / GD++ baselines, training, comparison metrics, and the bridge to Dai et al.'s dual
form (``dualform.core.equations.meta_gradient``). Entry point: :func:`run_regression`.

    data.py         in-context linear regression tasks, tokens (x, y), the prediction read-out
    lsa.py          the linear self-attention Transformer (a TransformerLens module)
    gd.py           GD on the in-context loss, its exact LSA construction, GD++
    baselines.py    tuned K-step GD (line-searched η) and GD++
    train.py        training LSA Transformers on fresh tasks
    metrics.py      trained Transformer vs GD: losses, implied models, cosines, OOD
    dual.py         the bridge to Dai et al.: the LSA update is the dual form's ΔW_ICL q
    experiment.py   run_regression: the whole reproduction, resumable
    summary.py      paper numbers, summary table, targets, output files
"""

from dualform.experiments.vonoswald.baselines import (
    GDPPTuning,
    GDTuning,
    gd_loss,
    tune_gd_eta,
    tune_gdpp,
)
from dualform.experiments.vonoswald.data import (
    RegressionBatch,
    half_mse,
    make_tokens,
    read_prediction,
    sample_tasks,
)
from dualform.experiments.vonoswald.dual import dual_form_bridge, layer_meta_gradient
from dualform.experiments.vonoswald.experiment import PAPER, RegressionConfig, run_regression
from dualform.experiments.vonoswald.gd import (
    constructed_lsa,
    curvature_correction,
    gd_construction,
    gd_predict,
    gd_step,
    gdpp_construction,
    gdpp_predict,
    in_context_gradient,
    in_context_loss,
)
from dualform.experiments.vonoswald.lsa import LSAConfig, LSATransformer, build_lsa
from dualform.experiments.vonoswald.metrics import (
    compare_to_gd,
    implied_linear_model,
    model_cosine,
    model_difference,
    ood_losses,
)
from dualform.experiments.vonoswald.train import TrainConfig, TrainResult, train_lsa

__all__ = [
    "PAPER",
    "GDPPTuning",
    "GDTuning",
    "LSAConfig",
    "LSATransformer",
    "RegressionBatch",
    "RegressionConfig",
    "TrainConfig",
    "TrainResult",
    "build_lsa",
    "compare_to_gd",
    "constructed_lsa",
    "curvature_correction",
    "dual_form_bridge",
    "gd_construction",
    "gd_loss",
    "gd_predict",
    "gd_step",
    "gdpp_construction",
    "gdpp_predict",
    "half_mse",
    "implied_linear_model",
    "in_context_gradient",
    "in_context_loss",
    "layer_meta_gradient",
    "make_tokens",
    "model_cosine",
    "model_difference",
    "ood_losses",
    "read_prediction",
    "run_regression",
    "sample_tasks",
    "train_lsa",
    "tune_gd_eta",
    "tune_gdpp",
]
