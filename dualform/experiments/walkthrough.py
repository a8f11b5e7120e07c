"""The dual-form walkthrough: one prompt on a real model, every identity checked and shown.

1. ICL prompt = a few sentiment demonstrations + a query; ZSL prompt = the query alone.
2. ``dual_form`` under relaxed linear attention: per-layer error of hook_z vs (W_ZSL + ΔW_ICL) q.
3. ‖ΔW_ICL‖ vs ‖W_ZSL‖ per layer under the model's real attention.
4. ``finetune_kv`` on the same demonstrations; per head, cos(ΔW_ICL q, Δz_FT) where
   Δz_FT = z_FT − z_ZSL is the attention-output change finetuning causes on the query alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from dualform.core.dual_form import demo_mask, dual_form
from dualform.core.finetune import finetune_kv
from dualform.core.relaxed import relaxed_linear_attention
from dualform.infra.reprs import compact_repr
from dualform.models.load import load_model
from dualform.probes import capture

DEMOS = [
    ("a gorgeous, witty, seductive movie.", "Positive"),
    ("the plot is nothing but boilerplate clichés.", "Negative"),
    ("an utterly charming and hilarious film.", "Positive"),
    ("it is a dull, lifeless mess.", "Negative"),
]
QUERY = "one of the most delightful films of the year."
TEMPLATE = "Sentence: {x} Label:{y}"


@dataclass
class WalkthroughPrompt:
    icl: torch.Tensor
    zsl: torch.Tensor
    n_demo_tokens: int
    demo_texts: list[str]

    __repr__ = compact_repr


def build_prompt(model) -> WalkthroughPrompt:
    """ICL tokens = BOS + demos + query; demos tokenised on their own so boundaries are exact."""
    demo_texts = [TEMPLATE.format(x=x, y=" " + y) + "\n" for x, y in DEMOS]
    demo_ids = model.to_tokens("".join(demo_texts), prepend_bos=False)[0]
    query = model.to_tokens(TEMPLATE.format(x=QUERY, y=""))[0]  # BOS + query
    icl = torch.cat([query[:1], demo_ids, query[1:]]).unsqueeze(0)
    return WalkthroughPrompt(icl, query.unsqueeze(0), len(demo_ids), demo_texts)


def run_walkthrough(model_name: str = "smollm2-135m", *, lr: float = 0.01, console=None) -> dict:
    """Run every step on ``model_name`` in float64 and print the tables; returns the numbers."""
    console = console or Console()
    model = load_model(model_name, dtype=torch.float64)
    prompt = build_prompt(model)
    n_pos = prompt.icl.shape[-1]
    console.print(f"[bold]{model_name}[/]: {n_pos} ICL tokens, {prompt.n_demo_tokens} of them demonstrations")

    identity = _identity_errors(model, prompt)
    real = dual_form(model, prompt.icl, prompt.n_demo_tokens, demo_start=1)
    norms = real.norms()
    ft = finetune_kv(model, prompt.demo_texts, lr)
    dz_ft = _z_last(ft.model, prompt.zsl) - _z_last(model, prompt.zsl)
    cos = torch.nn.functional.cosine_similarity(real.icl_update(), dz_ft, dim=-1)

    table = Table("layer", "rel.err full", "rel.err demo",
                  "‖ΔW_ICL‖", "‖W_ZSL‖", "cos(ΔW_ICL q, Δz_FT)", title="dual form per layer (relaxed identity errors; norms and cosines head-averaged)")
    for i, layer in enumerate(real.layers):
        table.add_row(
            str(layer), f"{identity['full'][i]:.1e}", f"{identity['demo'][i]:.1e}",
            f"{norms['delta_w_icl'][i].mean():.3g}", f"{norms['w_zsl'][i].mean():.3g}",
            f"{cos[i].mean():+.3f}",
        )
    console.print(table)
    console.print(f"finetuning losses: {[round(x, 3) for x in ft.losses]} (lr={lr})")
    return {
        "model": model_name,
        "n_tokens": n_pos,
        "n_demo_tokens": prompt.n_demo_tokens,
        "identity_error_full": identity["full"].tolist(),
        "identity_error_demo": identity["demo"].tolist(),
        "norm_delta_w_icl": norms["delta_w_icl"].tolist(),
        "norm_w_zsl": norms["w_zsl"].tolist(),
        "cos_icl_update_vs_ft": cos.tolist(),
        "ft_losses": ft.losses,
    }


def _identity_errors(model, prompt: WalkthroughPrompt) -> dict[str, torch.Tensor]:
    """Relative per-layer error of both relaxed identities (full prompt, demo columns only)."""
    mask = demo_mask(prompt.icl.shape[-1], prompt.n_demo_tokens, 1)
    out = {}
    for key, key_mask in (("full", None), ("demo", mask)):
        with relaxed_linear_attention(model, key_mask=key_mask):
            dual = dual_form(model, prompt.icl, prompt.n_demo_tokens, demo_start=1)
        target = dual.linear_attention_output() if key == "full" else dual.icl_update()
        scale = dual.z.abs().amax(dim=(-1, -2)).clamp_min(1e-30)
        out[key] = (dual.z - target).abs().amax(dim=(-1, -2)) / scale
    return out


def _z_last(model, tokens: torch.Tensor) -> torch.Tensor:
    """hook_z at the last position: ``[layer, head, d_head]``."""
    cap = capture(model, tokens, hooks=("z",))
    return cap.stack("z")[:, 0, -1]
