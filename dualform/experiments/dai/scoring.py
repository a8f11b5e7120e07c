"""Turn the ZSL/ICL/FT records of a task's test set into Dai's metrics (plus the follow-ups).

All similarity metrics here run over **all** test examples (the official ``all`` mode).
Kendall follows ``compute_training_example_attn.py``: ICL = the last token's pre-softmax scores
to the demonstration tokens, summed over heads; FT = ``q_query · q_train`` (query vectors of all
heads concatenated) against each training token; both softmaxed, then ranked.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import einsum, rearrange

from dualform.core import metrics as M
from dualform.experiments.dai.conditions import PromptPair, Record


def similarity_metrics(recs: dict[str, list[Record]], gold: np.ndarray, pairs: list[PromptPair],
                       train_q: torch.Tensor, *, seed: int = 0) -> dict:
    """Every metric of one task; ``train_q`` is ``[layer, n_demo_tokens, head·d_head]``."""
    correct = {c: np.array([r.prediction for r in rs]) == gold for c, rs in recs.items()}
    out: dict = {
        "accuracy": {c: M.accuracy([r.prediction for r in rs], gold) for c, rs in recs.items()},
        "rec2ftp": M.rec2ftp(correct["zsl"], correct["icl"], correct["ft"]),
        "n_f2t": int(M.f2t_mask(correct["zsl"], correct["icl"], correct["ft"]).sum()),
    }
    out["simaou"] = _simaou(recs, seed)
    out["simam"] = _simam(recs, pairs)
    out["kendall"] = _kendall(recs, pairs, train_q, seed)
    out["dual_form"] = _dual_form_summary(recs)
    return out


def without_ft(metrics: dict, reason: str) -> dict:
    """``metrics`` without every number that involves the finetuned model (it diverged): ZSL
    and ICL accuracy, SimAM before, the random baselines and the ΔW_ICL norms stay; FT
    accuracy is ``None``; ``ft_diverged_reason`` says why."""
    keep = {
        "accuracy": {**metrics["accuracy"], "ft": None},
        "simaou": {"random": metrics["simaou"]["random"]},
        "simam": {"before": metrics["simam"]["before"]},
        "kendall": {"random": metrics["kendall"]["random"]},
        "dual_form": {k: v for k, v in metrics["dual_form"].items() if k != "cos_icl_update_ft"},
    }
    return {**keep, "ft_diverged_reason": reason}


def _dual_form_summary(recs: dict[str, list[Record]]) -> dict:
    """Per layer×head: mean ‖ΔW_ICL‖, ‖W_ZSL‖ and cos(ΔW_ICL q, Δz_FT), Δz_FT = z_FT − z_ZSL."""
    icl = recs["icl"]
    update = torch.stack([r.icl_update for r in icl]).double()
    dz_ft = (_stack(recs["ft"], "z") - _stack(recs["zsl"], "z"))
    cos = M.cosine(update.numpy(), dz_ft)  # [example, layer, head]
    return {
        "norm_delta_w_icl": torch.stack([r.norm_delta_w_icl for r in icl]).mean(0).tolist(),
        "norm_w_zsl": torch.stack([r.norm_w_zsl for r in icl]).mean(0).tolist(),
        "cos_icl_update_ft": _summary(cos),
    }


def _stack(recs: list[Record], attr: str) -> np.ndarray:
    return torch.stack([getattr(r, attr) for r in recs]).double().numpy()


def _summary(values: np.ndarray) -> dict:
    """Headline number, per layer, and (for per-head inputs) the layer×head map."""
    out = {"mean": M.overall(values), "per_layer": M.layer_mean(values).tolist()}
    if values.ndim == 3:
        out["per_head"] = M.head_mean(values).tolist()
    return out


def _simaou(recs: dict[str, list[Record]], seed: int) -> dict:
    h = {c: _stack(rs, "attn_out") for c, rs in recs.items()}
    z = {c: _stack(rs, "z") for c, rs in recs.items()}
    rng = np.random.default_rng(seed)
    return {
        "normalized": _summary(M.simaou(h["zsl"], h["icl"], h["ft"], normalize=True)),
        "unnormalized": _summary(M.simaou(h["zsl"], h["icl"], h["ft"], normalize=False)),
        "random": _summary(M.simaou_random_baseline(h["zsl"], h["icl"], rng)),
        "per_head_z": _summary(M.simaou(z["zsl"], z["icl"], z["ft"], normalize=False)),
    }


def _query_scores(recs: list[Record], pairs: list[PromptPair], which: str) -> list[np.ndarray]:
    slices = [p.query_slice_icl if which == "icl" else p.query_slice_zsl for p in pairs]
    return [r.scores[:, :, s].double().numpy() for r, s in zip(recs, slices, strict=True)]


def _simam(recs: dict[str, list[Record]], pairs: list[PromptPair]) -> dict:
    icl = _query_scores(recs["icl"], pairs, "icl")
    zsl = _query_scores(recs["zsl"], pairs, "zsl")
    ft = _query_scores(recs["ft"], pairs, "zsl")
    return {
        "before": _summary(M.simam(icl, zsl)),
        "after": _summary(M.simam(icl, ft)),
        "delta": _summary(M.simam_delta(icl, zsl, ft)),
    }


def _kendall(recs: dict[str, list[Record]], pairs: list[PromptPair], train_q: torch.Tensor,
             seed: int) -> dict:
    icl = np.stack([r.scores[:, :, p.demo_slice].sum(1).double().numpy()
                    for r, p in zip(recs["icl"], pairs, strict=True)])  # [ex, layer, n_demo]
    q_ft = torch.stack([rearrange(r.q, "layer head d -> layer (head d)") for r in recs["ft"]])
    ft = einsum(q_ft.double(), train_q.double(), "ex layer d, layer n d -> ex layer n").numpy()
    if icl.shape != ft.shape:
        raise ValueError(f"Demonstration tokens ({icl.shape[-1]}) and training tokens "
                         f"({ft.shape[-1]}) are not aligned.")
    return {
        "value": _summary(M.kendall(icl, ft)),
        "random": _summary(M.kendall_random_baseline(icl, np.random.default_rng(seed))),
    }
