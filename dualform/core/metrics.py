"""Dai et al. (2023)'s ICL-vs-finetuning similarity metrics and Deutch et al. (2024)'s SimAM_Δ.

Each metric is one function whose docstring gives its formula. Inputs may be numpy arrays,
torch tensors or nested lists; everything is computed in float64 numpy, as the official code
computes on JSON-loaded lists. Conditions: ZSL = query alone, ICL = demonstrations + query,
FT = query alone on the finetuned model; all vectors are taken at the last prompt token.
Kendall's τ and top-k recall (ICL attention to the demonstrations vs FT attention to the
training tokens) live beside these, in :mod:`dualform.core.training_attention`.

The similarity metrics return **unreduced** values, one per example and layer
(``[example, layer]``) or per example, layer and head (``[example, layer, head]``, from per-head
inputs). Reduce them as the official code does with :func:`layer_mean` (``[layer]``),
:func:`head_mean` (``[layer, head]``) and :func:`overall` (a number). For the official ``f2t``
mode select the examples first: ``h[f2t_mask(zsl_ok, icl_ok, ft_ok)]``.

**Official conventions** (the authors' scripts, by default): the random baselines draw from
numpy's legacy Mersenne-Twister stream, ``RandomState(seed)`` (:func:`official_stream`) — bit
for bit the values of ``np.random.seed(seed)`` followed by the scripts' ``np.random.random``
calls; numpy's global state is never touched. The scripts themselves never seed: their
baselines change run to run.

Checked against ports of ``microsoft/LMOps`` ``understand_icl/icl_ft/compute_sim.py`` and
``GiilDe/ft-vs-icl`` ``scripts/metrics.py`` (see ``tests/test_metrics.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float

from dualform.core.official_random import official_stream

#: The official code's cosine/normalisation epsilon (``+ 1e-20`` in the denominator).
EPS = 1e-20

__all__ = [
    "MetricNotApplicableError", "accuracy", "as_float64", "as_stream", "cosine", "f2t_mask",
    "head_mean", "l2_normalize", "layer_mean", "mean_of_defined", "official_stream", "overall", "pad_left", "rec2ftp",
    "simam", "simam_delta", "simaou", "simaou_random_baseline",
]


class MetricNotApplicableError(ValueError):
    """A metric does not apply to these inputs (where the official script would crash)."""


def as_float64(x: Any, dtype=np.float64) -> np.ndarray:
    """``x`` (a tensor, array or nested list) as a numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def cosine(a: Any, b: Any) -> np.ndarray:
    """cos(a, b) = a·b / (‖a‖ ‖b‖ + 1e-20) along the last axis (the official ``cal_cos_sim``)."""
    a, b = as_float64(a), as_float64(b)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + EPS)


def l2_normalize(h: Any) -> np.ndarray:
    """h / (‖h‖ + 1e-20) along the last axis (the official ``norm_hidden``)."""
    h = as_float64(h)
    return h / (np.linalg.norm(h, axis=-1, keepdims=True) + EPS)


# --------------------------------------------------------------------------- predictions


def accuracy(pred: Any, gold: Any) -> float:
    """Accuracy in percent: 100 · N(pred = gold) / N (as the official logger and Dai's tables)."""
    pred, gold = as_float64(pred, np.int64), as_float64(gold, np.int64)
    if pred.shape != gold.shape or pred.size == 0:
        raise ValueError(f"accuracy needs equal, non-empty shapes; got {pred.shape}, {gold.shape}.")
    return float(100.0 * (pred == gold).mean())


def f2t_mask(zsl_correct: Any, icl_correct: Any, ft_correct: Any) -> Bool[np.ndarray, " example"]:
    """The official ``f2t`` selection: ZSL ✗ ∧ FT ✓ ∧ ICL ✓ (examples both updates fix)."""
    zsl, icl, ft = (as_float64(v, bool) for v in (zsl_correct, icl_correct, ft_correct))
    return ~zsl & ft & icl


def rec2ftp(zsl_correct: Any, icl_correct: Any, ft_correct: Any) -> float:
    """Recall to finetuning predictions, in percent:

        Rec2FTP = 100 · N(FT ✓ ∧ ZSL ✗ ∧ ICL ✓) / N(FT ✓ ∧ ZSL ✗)

    (``count_f2t`` in the official ``compute_sim.py``). Returns ``nan`` when finetuning fixes
    no example (denominator 0), where the official code would divide by zero.
    """
    zsl, icl, ft = (as_float64(v, bool) for v in (zsl_correct, icl_correct, ft_correct))
    denominator = int((ft & ~zsl).sum())
    if denominator == 0:
        return float("nan")
    return float(100.0 * (ft & ~zsl & icl).sum() / denominator)


# --------------------------------------------------------------------------- attention outputs


def simaou(h_zsl: Any, h_icl: Any, h_ft: Any, *, normalize: bool = True) -> np.ndarray:
    """Similarity of attention output updates, per example and layer (and head):

        SimAOU = cos(ĥ_ICL − ĥ_ZSL, ĥ_FT − ĥ_ZSL),   ĥ = h / (‖h‖ + 1e-20) if normalize else h

    ``h``: attention outputs ``[example, layer, d_model]`` (after W_O, before the residual add)
    → ``[example, layer]``; or per-head ``z`` vectors ``[example, layer, head, d_head]``
    → ``[example, layer, head]``. ``normalize=True`` is Dai's (official) version; Deutch et
    al. report the unnormalised one (``normalize=False``), which normalisation inflates.
    """
    h_zsl, h_icl, h_ft = _prepare(h_zsl, h_icl, h_ft, normalize=normalize)
    return cosine(h_icl - h_zsl, h_ft - h_zsl)


def simaou_random_baseline(
    h_zsl: Any, h_update: Any, rng: Any = 0, *, normalize: bool = True
) -> np.ndarray:
    """SimAOU against a random update, per example and layer (and head):

        cos(ĥ_X − ĥ_ZSL, U),   U ~ Uniform[0, 1)^shape   (``np.random.random``, as official)

    The official code passes X = ICL (``icl_updates`` vs ``random_updates``); pass ``h_ft`` to
    compare finetuning with a random update instead. ``rng``: an int seed (the official stream,
    :func:`official_stream`: ``compute_sim.py``'s one draw, after ``np.random.seed(seed)``), a
    ``RandomState`` or a ``np.random.Generator`` (not the official stream).
    """
    h_zsl, h_update = _prepare(h_zsl, h_update, normalize=normalize)
    update = h_update - h_zsl
    return cosine(update, as_stream(rng).random(update.shape))


def _prepare(*hs: Any, normalize: bool) -> list[np.ndarray]:
    arrays = [as_float64(h) for h in hs]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"All conditions need the same shape; got {[a.shape for a in arrays]}.")
    return [l2_normalize(a) for a in arrays] if normalize else arrays


def as_stream(rng: Any) -> Any:
    """Something with ``.random(shape)``: the official stream of an int seed, or ``rng``."""
    if isinstance(rng, int | np.integer):
        return official_stream(int(rng))
    if rng is None or not hasattr(rng, "random"):
        raise TypeError(f"Expected a seed, RandomState or Generator; got {rng!r}.")
    return rng


# --------------------------------------------------------------------------- attention maps


def pad_left(
    maps: Any, pad_value: float = 0.0, length: int | None = None
) -> Float[np.ndarray, "example layer head q"]:
    """Ragged per-example score maps ``[layer, head, q_i]`` → ``[example, layer, head, q]``,
    left-padded with ``pad_value`` to ``length`` (default: the longest ``q_i``) — the official
    handling, with 0 for raw scores. An already padded array is only widened if needed."""
    arrays = [as_float64(m) for m in maps]
    longest = max(a.shape[-1] for a in arrays) if length is None else length
    out = np.full((len(arrays), *arrays[0].shape[:-1], longest), pad_value, dtype=np.float64)
    for i, a in enumerate(arrays):
        if a.shape[-1] > longest:
            raise ValueError(f"Example {i} has {a.shape[-1]} query tokens, more than {longest}.")
        out[i, ..., longest - a.shape[-1]:] = a
    return out


def _score_maps(*conditions: Any) -> list[np.ndarray]:
    """Pad every condition's maps to one common length; each example's lengths must agree."""
    lengths = [[as_float64(m).shape[-1] for m in maps] for maps in conditions]
    if any(ls != lengths[0] for ls in lengths):
        raise ValueError("Each example needs the same number of query tokens in every condition.")
    longest = max(lengths[0])
    arrays = [pad_left(maps, length=longest) for maps in conditions]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"Score maps need the same shape; got {[a.shape for a in arrays]}.")
    return arrays


def simam(scores_a: Any, scores_b: Any) -> Float[np.ndarray, "example layer head"]:
    """Similarity of attention maps, per example, layer and head:

        SimAM = cos(s_A, s_B),   s = the last token's pre-softmax scores over the query tokens

    ``scores``: ``[example, layer, head, q]`` or a list of ``[layer, head, q_i]`` (left-padded
    with zeros to the longest query, which leaves each cosine unchanged). Dai: "before" =
    ``simam(icl, zsl)``, "after" = ``simam(icl, ft)``; average with :func:`layer_mean` (heads,
    then examples) and :func:`overall` (then layers), as ``compute_sim.py``.
    """
    a, b = _score_maps(scores_a, scores_b)
    return cosine(a, b)


#: A score change no larger than this fraction of ‖s_ZSL‖ is rounding, not a change (float32
#: rounds at ~1e-7 relative; the smallest real ICL change measured on SmolLM2-135M was 0.09).
UNCHANGED_RTOL = 1e-4


def simam_delta(
    scores_icl: Any, scores_zsl: Any, scores_ft: Any, *, rtol: float = UNCHANGED_RTOL
) -> Float[np.ndarray, "example layer head"]:
    """SimAM on score changes (Deutch et al. 2024, ``GiilDe/ft-vs-icl``), per example/layer/head:

        SimAM_Δ = cos(s_ICL − s_ZSL, s_FT − s_ZSL),   nan where ‖s_X − s_ZSL‖ ≤ rtol·‖s_ZSL‖

    Same inputs and padding as :func:`simam`. Where ICL or FT leaves the scores unchanged up to
    rounding the cosine compares rounding errors — noise that moves with the order of a sum —
    so it is ``nan`` (undefined), not a similarity. On a rotary model whose embeddings carry no
    position (Llama, SmolLM2) layer 0 is such a layer for ICL: the last token's scores over the
    query tokens depend only on those tokens and their relative positions, the same in both
    prompts (SmolLM2-135M: ‖Δ‖/‖s‖ = 2e-7 – 3e-6 at layer 0, ≥ 0.09 from layer 1). The
    official code, written for absolute positions, has no such layer and averages whatever it
    gets; reduce these values with ``skip_undefined=True`` (:func:`layer_mean`, :func:`overall`).
    """
    icl, zsl, ft = _score_maps(scores_icl, scores_zsl, scores_ft)
    d_icl, d_ft = icl - zsl, ft - zsl
    floor = rtol * np.linalg.norm(zsl, axis=-1)
    unchanged = (np.linalg.norm(d_icl, axis=-1) <= floor) | (np.linalg.norm(d_ft, axis=-1) <= floor)
    return np.where(unchanged, np.nan, cosine(d_icl, d_ft))


# --------------------------------------------------------------------------- reductions


def layer_mean(values: Any, *, skip_undefined: bool = False) -> Float[np.ndarray, " layer"]:
    """``[example, layer]`` → mean over examples; ``[example, layer, head]`` → mean over heads,
    then examples (the official order). ``skip_undefined``: means over the defined (non-``nan``)
    values, ``nan`` where there are none (e.g. :func:`simam_delta`); otherwise ``nan`` spreads."""
    values, mean = as_float64(values), _mean(skip_undefined)
    if values.ndim == 3:
        values = mean(values, axis=2)
    if values.ndim != 2:
        raise ValueError(f"Expected [example, layer(, head)] values; got shape {values.shape}.")
    return mean(values, axis=0)


def head_mean(values: Any, *, skip_undefined: bool = False) -> Float[np.ndarray, "layer head"]:
    """``[example, layer, head]`` → mean over examples, per layer and head."""
    values = as_float64(values)
    if values.ndim != 3:
        raise ValueError(f"Expected [example, layer, head] values; got shape {values.shape}.")
    return _mean(skip_undefined)(values, axis=0)


def overall(values: Any, *, skip_undefined: bool = False) -> float:
    """The headline number: :func:`layer_mean`, then the mean over layers."""
    return float(_mean(skip_undefined)(layer_mean(values, skip_undefined=skip_undefined)))


def _mean(skip_undefined: bool):
    """``np.mean``, or :func:`mean_of_defined`."""
    return mean_of_defined if skip_undefined else np.mean


def mean_of_defined(values: Any, axis: int | None = None) -> Any:
    """``np.nanmean``: the mean of the defined (non-``nan``) values; ``nan`` where there are
    none, silently (an undefined layer or head is expected, not a warning; computed without a
    warnings filter, which is process-wide and races between the worker threads)."""
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, values, 0.0).sum(axis) / defined.sum(axis)
