"""dualform — in-context learning as implicit finetuning, head by head, on TransformerLens models."""

from dualform.dual_form import (
    DualForm,
    SoftmaxSplit,
    demo_mask,
    dual_form,
    softmax_decomposition,
)
from dualform.equations import linear_attention, linear_layer_dual, meta_gradient, softmax_split
from dualform.models import DEFAULT_MODEL, ModelLoadError, load_model, resolve_device
from dualform.probes import Capture, ProbeError, attention_scale, capture, hooks
from dualform.relaxed import relaxed_linear_attention

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "Capture",
    "DualForm",
    "ModelLoadError",
    "ProbeError",
    "SoftmaxSplit",
    "attention_scale",
    "capture",
    "demo_mask",
    "dual_form",
    "hooks",
    "linear_attention",
    "linear_layer_dual",
    "load_model",
    "meta_gradient",
    "relaxed_linear_attention",
    "resolve_device",
    "softmax_decomposition",
    "softmax_split",
]
