"""The dual-form walkthrough: one prompt on a real model, every identity checked, in float64.

1. ICL prompt = ``shots`` demonstrations of a task + its first test example; ZSL prompt = the
   test example alone (:func:`dualform.experiments.dai.conditions.prompt_pair`).
2. ``dual_form`` under relaxed linear attention: per-layer error of hook_z vs (W_ZSL + ΔW_ICL) q
   (all keys) and of the demonstrations' part vs ΔW_ICL q (demonstration keys only).
3. ‖ΔW_ICL‖ vs ‖W_ZSL‖ per layer under the model's real attention.
4. ``finetune_kv`` on the same demonstrations; per head, cos(ΔW_ICL q, Δz_FT) where
   Δz_FT = z_FT − z_ZSL is the attention-output change finetuning causes on the query alone.

:func:`run_walkthrough` returns the numbers; :func:`dualform.viz.terminal.print_walkthrough`
prints them with a legend for every column.
"""

from __future__ import annotations

import torch

from dualform.core.dual_form import demo_mask, dual_form
from dualform.core.finetune import finetune_kv
from dualform.core.relaxed import relaxed_linear_attention
from dualform.errors import InvalidArgumentError
from dualform.experiments.dai.conditions import PromptPair, demo_training_texts, prompt_pair
from dualform.models.load import load_model
from dualform.probes import capture
from dualform.tasks.prompts import load_task, sample_demos


def run_walkthrough(model_name: str = "smollm2-135m", *, task: str = "afinn-sentiment",
                    shots: int = 4, seed: int = 1, lr: float = 0.01) -> dict:
    """Every step of the walkthrough on ``model_name`` in float64; returns the numbers."""
    if shots < 1:
        raise InvalidArgumentError(f"shots must be at least 1 (got {shots}): the dual form needs demonstrations.")
    model = load_model(model_name, dtype=torch.float64)
    the_task = load_task(task)
    demos = sample_demos(the_task, shots, seed)
    query = the_task.test[0]
    pair = prompt_pair(model, the_task, demos, query)
    icl = pair.icl
    identity = identity_errors(model, pair)
    real = dual_form(model, icl.tokens, icl.n_demo_tokens, demo_start=icl.demo_start)
    norms = real.norms()
    ft = finetune_kv(model, demo_training_texts(model, the_task, demos), lr)
    dz_ft = z_last(ft.model, pair.zsl.tokens) - z_last(model, pair.zsl.tokens)
    cos = torch.nn.functional.cosine_similarity(real.icl_update(), dz_ft, dim=-1)
    return {
        "model": model_name,
        "task": task,
        "shots": shots,
        "seed": seed,
        "lr": lr,
        "query": the_task.format(query, with_label=False),
        "gold": the_task.label_words[query.label],
        "n_tokens": icl.tokens.shape[-1],
        "n_demo_tokens": icl.n_demo_tokens,
        "layers": list(real.layers),
        "identity_error_full": identity["full"].tolist(),
        "identity_error_demo": identity["demo"].tolist(),
        "norm_delta_w_icl": norms["delta_w_icl"].tolist(),
        "norm_w_zsl": norms["w_zsl"].tolist(),
        "cos_icl_update_vs_ft": cos.tolist(),
        "ft_losses": ft.losses,
    }


def identity_errors(model, pair: PromptPair) -> dict[str, torch.Tensor]:
    """Relative per-layer error of both relaxed identities (all keys; demonstration keys only):
    ``max |z − target| / max |z|`` over heads and d_head, ``[layer]``."""
    icl = pair.icl
    mask = demo_mask(icl.tokens.shape[-1], icl.n_demo_tokens, icl.demo_start)
    out = {}
    for key, key_mask in (("full", None), ("demo", mask)):
        with relaxed_linear_attention(model, key_mask=key_mask):
            dual = dual_form(model, icl.tokens, icl.n_demo_tokens, demo_start=icl.demo_start)
        target = dual.linear_attention_output() if key == "full" else dual.icl_update()
        scale = dual.z.abs().amax(dim=(-1, -2)).clamp_min(1e-30)
        out[key] = (dual.z - target).abs().amax(dim=(-1, -2)) / scale
    return out


def z_last(model, tokens: torch.Tensor) -> torch.Tensor:
    """hook_z at the last position: ``[layer, head, d_head]``."""
    cap = capture(model, tokens, hooks=("z",))
    return cap.stack("z")[:, 0, -1]
