"""Turn the ZSL/ICL/FT records of a task's test set into Dai's metrics (plus the follow-ups).

The similarity metrics (SimAOU normalised / unnormalised / random, SimAM before / after,
SimAM_Δ) run in both official modes: over **all** test examples (top level of the result, as
``compute_sim.py ... all``) and over the examples both updates fix (``f2t``: ZSL ✗, FT ✓,
ICL ✓; under ``"f2t"``). Kendall and top-k recall follow ``compute_training_example_attn.py``
at token and example level: ICL = the last token's pre-softmax scores to the ranked
demonstration tokens, summed over heads; FT = :func:`~dualform.core.training_attention.finetuning_scores`
of the finetuned model's last query against each training token's query.

Official conventions by default, each deviation an option: ``scaled_queries=False`` (raw
``q·q`` in Kendall's FT map) and ranked tokens with the separators
(``DemoLayout.ranked(keep_separator=True)``). Every random baseline draws from the official
streams seeded with ``seed`` (:func:`~dualform.core.metrics.official_stream`), each script
starting afresh: ``compute_sim.py`` once per mode, ``compute_training_example_attn.py`` once.
A metric that does not apply is ``{"not_applicable": reason}`` (and listed in ``notes``).
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from dualform.core import metrics as M
from dualform.core import training_attention as TA
from dualform.experiments.dai.conditions import PromptPair, RankedTokens, Record
from dualform.experiments.dai.results import Summary

F2T_EMPTY = ("no test example is fixed by both finetuning and ICL (ZSL wrong, FT right, ICL "
             "right), so the f2t mode has nothing to average (the official compute_sim.py fails)")
REC2FTP_EMPTY = ("finetuning fixes no test example (none with ZSL wrong and FT right): Rec2FTP "
                 "is 0/0 (the official count_f2t raises ZeroDivisionError)")


def similarity_metrics(recs: dict[str, list[Record]], gold: np.ndarray, pairs: list[PromptPair],
                       train_q: torch.Tensor, ranked: RankedTokens, *, seed: int = 0,
                       scaled_queries: bool = True) -> dict:
    """Every metric of one task, each a :class:`Summary` (with its per-example values, what
    the intervals resample). ``train_q``: ``[layer, n_ranked, head·d_head]``, the training
    tokens' queries aligned with ``ranked`` (the ranked tokens of the demonstration span)."""
    correct = {c: np.array([r.prediction for r in rs]) == gold for c, rs in recs.items()}
    f2t = M.f2t_mask(correct["zsl"], correct["icl"], correct["ft"])
    notes: dict[str, str] = {}
    fixed_by_ft = correct["ft"] & ~correct["zsl"]  # Rec2FTP's denominator
    out: dict = {
        "accuracy": {c: Summary.scalar(M.accuracy([r.prediction for r in rs], gold), 100.0 * correct[c])
                     for c, rs in recs.items()},
        "rec2ftp": Summary.scalar(M.rec2ftp(correct["zsl"], correct["icl"], correct["ft"]),
                                  100.0 * correct["icl"][fixed_by_ft]),
        "n_ft_fixed": int(fixed_by_ft.sum()),
        "n_f2t": int(f2t.sum()),
    }
    if out["n_ft_fixed"] == 0:
        notes["rec2ftp"] = REC2FTP_EMPTY
    out.update(_similarities(recs, pairs, np.ones(len(gold), bool), seed))
    if f2t.any():
        out["f2t"] = {"n": int(f2t.sum())} | _similarities(recs, pairs, f2t, seed)
    else:
        out["f2t"] = {"not_applicable": F2T_EMPTY}
        notes["f2t"] = F2T_EMPTY
    training = _training_attention(recs, pairs, train_q, ranked, seed, scaled_queries)
    out["kendall"], out["topk_recall"] = training["kendall"], training["topk_recall"]
    notes.update(training["notes"])
    out["dual_form"] = _dual_form_summary(recs)
    out["notes"] = notes
    return out


def _similarities(recs: dict[str, list[Record]], pairs: list[PromptPair], keep: np.ndarray,
                  seed: int) -> dict:
    """SimAOU and SimAM over the examples ``keep`` (one ``compute_sim.py`` run)."""
    chosen = {c: [r for r, k in zip(rs, keep, strict=True) if k] for c, rs in recs.items()}
    return {"simaou": _simaou(chosen, seed),
            "simam": _simam(chosen, [p for p, k in zip(pairs, keep, strict=True) if k])}


def without_ft(metrics: dict, reason: str) -> dict:
    """``metrics`` without every number that involves the finetuned model (it diverged): ZSL
    and ICL accuracy, SimAM before, the random baselines and the ΔW_ICL norms stay; FT
    accuracy is ``None``; ``ft_diverged_reason`` says why."""
    keep = {
        "accuracy": {**metrics["accuracy"], "ft": None},
        "simaou": _random_baselines(metrics["simaou"]),
        "simam": {"before": metrics["simam"]["before"]},
        "kendall": _random_baselines(metrics["kendall"]),
        "topk_recall": {level: _random_baselines(block)
                        for level, block in metrics["topk_recall"].items()},
        "dual_form": {k: v for k, v in metrics["dual_form"].items() if k != "cos_icl_update_ft"},
        "notes": metrics.get("notes", {}),
    }
    return {**keep, "ft_diverged_reason": reason}


def _random_baselines(block: dict) -> dict:
    """Only the random-baseline entries of a metric block (they do not involve FT)."""
    if "not_applicable" in block:
        return block
    return {key: value for key, value in block.items() if "random" in key}


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


def _summary(values: np.ndarray, *, skip_undefined: bool = False) -> Summary:
    """Headline number, per layer, per example and (for per-head inputs) the layer×head map."""
    return Summary.of(values, skip_undefined=skip_undefined)


def _simaou(recs: dict[str, list[Record]], seed: int) -> dict:
    h = {c: _stack(rs, "attn_out") for c, rs in recs.items()}
    z = {c: _stack(rs, "z") for c, rs in recs.items()}
    return {
        "normalized": _summary(M.simaou(h["zsl"], h["icl"], h["ft"], normalize=True)),
        "unnormalized": _summary(M.simaou(h["zsl"], h["icl"], h["ft"], normalize=False)),
        "random": _summary(M.simaou_random_baseline(h["zsl"], h["icl"], M.official_stream(seed))),
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
        "delta": _summary(M.simam_delta(icl, zsl, ft), skip_undefined=True),  # nan: unchanged
    }


def kendall_inputs(recs: dict[str, list[Record]], pairs: list[PromptPair], train_q: torch.Tensor,
                   ranked: RankedTokens, *, scaled_queries: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(icl, ft)`` pre-softmax scores ``[example, layer, n_ranked]``: ICL scores of the last
    token to the ranked demonstration tokens summed over heads, and the FT map."""
    positions = list(ranked.positions)
    icl = np.stack([r.scores[:, :, p.demo_slice][..., positions].sum(1).double().numpy()
                    for r, p in zip(recs["icl"], pairs, strict=True)])
    q_ft = torch.stack([rearrange(r.q, "layer head d -> layer (head d)") for r in recs["ft"]])
    if train_q.shape[1] != len(positions):
        raise ValueError(f"Ranked demonstration tokens ({len(positions)}) and training tokens "
                         f"({train_q.shape[1]}) are not aligned.")
    ft = TA.finetuning_scores(q_ft.double().numpy(), train_q.double().numpy(),
                              d_head=recs["ft"][0].q.shape[-1], scaled=scaled_queries)
    return icl, ft


def _training_attention(recs: dict[str, list[Record]], pairs: list[PromptPair],
                        train_q: torch.Tensor, ranked: RankedTokens, seed: int,
                        scaled_queries: bool) -> dict:
    """Kendall (token / example level) and top-k recall with their random baselines."""
    icl, ft = kendall_inputs(recs, pairs, train_q, ranked, scaled_queries=scaled_queries)
    levels = TA.training_attention(icl, ft, ranked.segments, seed=seed)
    tok, ex = levels["token"], levels["example"]
    kendall = {"value": _summary(tok["kendall"]), "random": _summary(tok["kendall_random"]),
               "example": _summary(ex["kendall"]), "example_random": _summary(ex["kendall_random"])}
    recall, notes = {}, {}
    for level, res in levels.items():
        entry: dict = {"k": TA.TOPK[level]}
        if isinstance(res["recall"], str):
            entry["not_applicable"] = notes[f"topk_recall.{level}"] = res["recall"]
        else:
            entry |= {"value": _summary(res["recall"]), "random": _summary(res["recall_random"])}
        recall[level] = entry
    return {"kendall": kendall, "topk_recall": recall, "notes": notes}
