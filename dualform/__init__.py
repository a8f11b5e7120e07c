"""dualform — in-context learning as implicit finetuning, head by head, on TransformerLens models."""

from dualform.attribution import (
    compare_maps,
    ft_head_effects,
    ft_head_effects_mean,
    icl_head_effects,
    icl_head_effects_batch,
)
from dualform.conditions import record_all
from dualform.dai import DaiConfig, run_dai
from dualform.dual_form import (
    DualForm,
    SoftmaxSplit,
    demo_mask,
    dual_form,
    softmax_decomposition,
    split_meta_gradient,
)
from dualform.equations import linear_attention, linear_layer_dual, meta_gradient, softmax_split
from dualform.executors import LocalExecutor, RayExecutor, get_executor
from dualform.finetune import FinetuneDivergedError, FinetuneResult, finetune_kv, kv_parameters
from dualform.finetune_grid import finetune_kv_grid
from dualform.models import DEFAULT_MODEL, ModelLoadError, load_model, resolve_device, resolve_dtype
from dualform.prefix import PrefixRun, auto_batch_size
from dualform.probes import Capture, ProbeError, attention_scale, capture, hooks
from dualform.relaxed import relaxed_linear_attention
from dualform.report import write_report
from dualform.sweep import run_sweep
from dualform.tasks import (
    OFFLINE_TASKS,
    Task,
    build_prompt,
    label_token_ids,
    load_task,
    load_user_task,
    prompt_tokens,
    sample_demos,
)
from dualform.viz import figures_from_results

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_TASKS",
    "DaiConfig",
    "FinetuneDivergedError",
    "FinetuneResult",
    "Task",
    "build_prompt",
    "compare_maps",
    "finetune_kv",
    "ft_head_effects",
    "icl_head_effects",
    "kv_parameters",
    "label_token_ids",
    "load_task",
    "load_user_task",
    "prompt_tokens",
    "run_dai",
    "sample_demos",
    "write_report",
    "figures_from_results",
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
    "split_meta_gradient",
    "ft_head_effects_mean",
    "icl_head_effects_batch",
    "record_all",
    "LocalExecutor",
    "RayExecutor",
    "get_executor",
    "run_sweep",
    "resolve_dtype",
    "PrefixRun",
    "auto_batch_size",
    "finetune_kv_grid",
]
