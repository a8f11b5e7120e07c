"""Dai et al. (2023)'s ICL-vs-finetuning metrics and Deutch et al. (2024)'s SimAM_Δ.

Each metric is one function whose docstring gives its formula. Inputs may be numpy arrays,
torch tensors or nested lists; everything is computed in float64 numpy, as the official code
computes on JSON-loaded lists. Conditions: ZSL = query alone, ICL = demonstrations + query,
FT = query alone on the finetuned model; all vectors are taken at the last prompt token.

The similarity metrics return **unreduced** values, one per example and layer
(``[example, layer]``) or per example, layer and head (``[example, layer, head]``, from per-head
inputs). Reduce them as the official code does with :func:`layer_mean` (``[layer]``),
:func:`head_mean` (``[layer, head]``) and :func:`overall` (a number). For the official ``f2t``
mode select the examples first: ``h[f2t_mask(zsl_ok, icl_ok, ft_ok)]``.

**Official conventions** (the authors' scripts, by default; each deviation is an option):

* Kendall's finetuning map multiplies *scaled* queries, ``q_query·q_train / d_head``
  (:func:`finetuning_scores`; ``scaled=False`` for raw ``q·q``);
* random baselines draw from numpy's legacy Mersenne-Twister stream, ``RandomState(seed)``
  (:func:`official_stream`) — bit for bit the values of ``np.random.seed(seed)`` followed by the
  scripts' ``np.random.random`` calls — and the top-k recall baseline from Python's
  ``random.Random(seed)`` (the scripts' ``random.randint``); numpy's and Python's global states
  are never touched. The scripts themselves never seed: their baselines change run to run;
* which demonstration tokens are ranked (the separators are left out) is decided by the caller
  (``dualform.experiments.dai.conditions.DemoLayout.ranked``).

Checked against ports of ``microsoft/LMOps`` ``understand_icl/icl_ft/compute_sim.py`` and
``compute_training_example_attn.py`` and ``GiilDe/ft-vs-icl`` ``scripts/metrics.py``
(see ``tests/test_metrics.py``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float

from dualform.core.official_random import official_stream, randints
from dualform.core.rank import kendall_tau_b

#: The official code's cosine/normalisation epsilon (``+ 1e-20`` in the denominator).
EPS = 1e-20
#: The official top-k of ``compute_training_example_attn.py`` per level.
TOPK = {"token": 100, "example": 5}

__all__ = [
    "TOPK", "MetricNotApplicableError", "accuracy", "cosine", "f2t_mask", "finetuning_scores",
    "head_mean", "kendall", "kendall_random_baseline", "kendall_tau_b", "l2_normalize", "layer_mean",
    "official_stream", "overall", "pad_left", "rec2ftp", "simam", "simam_delta", "simaou",
    "simaou_random_baseline", "topk_recall", "topk_recall_random_baseline", "training_attention",
]


class MetricNotApplicableError(ValueError):
    """A metric does not apply to these inputs (where the official script would crash)."""


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def cosine(a: Any, b: Any) -> np.ndarray:
    """cos(a, b) = a·b / (‖a‖ ‖b‖ + 1e-20) along the last axis (the official ``cal_cos_sim``)."""
    a, b = _np(a), _np(b)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + EPS)


def l2_normalize(h: Any) -> np.ndarray:
    """h / (‖h‖ + 1e-20) along the last axis (the official ``norm_hidden``)."""
    h = _np(h)
    return h / (np.linalg.norm(h, axis=-1, keepdims=True) + EPS)


# --------------------------------------------------------------------------- predictions


def accuracy(pred: Any, gold: Any) -> float:
    """Accuracy in percent: 100 · N(pred = gold) / N (as the official logger and Dai's tables)."""
    pred, gold = _np(pred, np.int64), _np(gold, np.int64)
    if pred.shape != gold.shape or pred.size == 0:
        raise ValueError(f"accuracy needs equal, non-empty shapes; got {pred.shape}, {gold.shape}.")
    return float(100.0 * (pred == gold).mean())


def f2t_mask(zsl_correct: Any, icl_correct: Any, ft_correct: Any) -> Bool[np.ndarray, " example"]:
    """The official ``f2t`` selection: ZSL ✗ ∧ FT ✓ ∧ ICL ✓ (examples both updates fix)."""
    zsl, icl, ft = (_np(v, bool) for v in (zsl_correct, icl_correct, ft_correct))
    return ~zsl & ft & icl


def rec2ftp(zsl_correct: Any, icl_correct: Any, ft_correct: Any) -> float:
    """Recall to finetuning predictions, in percent:

        Rec2FTP = 100 · N(FT ✓ ∧ ZSL ✗ ∧ ICL ✓) / N(FT ✓ ∧ ZSL ✗)

    (``count_f2t`` in the official ``compute_sim.py``). Returns ``nan`` when finetuning fixes
    no example (denominator 0), where the official code would divide by zero.
    """
    zsl, icl, ft = (_np(v, bool) for v in (zsl_correct, icl_correct, ft_correct))
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
    return cosine(update, _as_rng(rng).random(update.shape))


def _prepare(*hs: Any, normalize: bool) -> list[np.ndarray]:
    arrays = [_np(h) for h in hs]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"All conditions need the same shape; got {[a.shape for a in arrays]}.")
    return [l2_normalize(a) for a in arrays] if normalize else arrays


def _as_rng(rng: Any) -> Any:
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
    arrays = [_np(m) for m in maps]
    longest = max(a.shape[-1] for a in arrays) if length is None else length
    out = np.full((len(arrays), *arrays[0].shape[:-1], longest), pad_value, dtype=np.float64)
    for i, a in enumerate(arrays):
        if a.shape[-1] > longest:
            raise ValueError(f"Example {i} has {a.shape[-1]} query tokens, more than {longest}.")
        out[i, ..., longest - a.shape[-1]:] = a
    return out


def _score_maps(*conditions: Any) -> list[np.ndarray]:
    """Pad every condition's maps to one common length; each example's lengths must agree."""
    lengths = [[_np(m).shape[-1] for m in maps] for maps in conditions]
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


def simam_delta(
    scores_icl: Any, scores_zsl: Any, scores_ft: Any
) -> Float[np.ndarray, "example layer head"]:
    """SimAM on score changes (Deutch et al. 2024, ``GiilDe/ft-vs-icl``), per example/layer/head:

        SimAM_Δ = cos(s_ICL − s_ZSL, s_FT − s_ZSL)

    Same inputs and padding as :func:`simam`.
    """
    icl, zsl, ft = _score_maps(scores_icl, scores_zsl, scores_ft)
    return cosine(icl - zsl, ft - zsl)


# --------------------------------------------------------------------------- training attention


def finetuning_scores(
    q_query: Any, q_train: Any, *, d_head: int, scaled: bool = True
) -> Float[np.ndarray, "example layer n"]:
    """Kendall's finetuning-side scores: the finetuned model's last query against every training
    token's query (all heads concatenated, ``[example, layer, d]`` and ``[layer, n, d]``):

        s_FT = q_query · q_train / d_head     (scaled=True, official)
        s_FT = q_query · q_train              (scaled=False)

    The official recorder stores each query already multiplied by 1/√d_head (fairseq scales
    ``q`` before recording it), so its product of two recorded queries carries 1/d_head.
    Unscaled products are ~d_head times larger and saturate the softmax (ties at exactly 0).
    """
    q_query, q_train = _np(q_query), _np(q_train)
    if q_query.ndim != 3 or q_train.ndim != 3 or q_query.shape[1:] != (q_train.shape[0], q_train.shape[2]):
        raise ValueError(f"Expected q_query [example, layer, d] and q_train [layer, n, d]; got "
                         f"{q_query.shape}, {q_train.shape}.")
    scores = np.einsum("eld,lnd->eln", q_query, q_train)
    return scores / d_head if scaled else scores


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _segment_sums(p: np.ndarray, segments: Sequence[int] | None) -> np.ndarray:
    if segments is None:
        return p
    if sum(segments) != p.shape[-1]:
        raise ValueError(f"segments sum to {sum(segments)}, but there are {p.shape[-1]} tokens.")
    edges = np.cumsum([0, *segments])
    return np.stack([p[..., s:e].sum(-1) for s, e in zip(edges[:-1], edges[1:], strict=True)], -1)


def kendall(
    icl_attention_to_demos: Any,
    ft_attention_to_train: Any,
    *,
    segments: Sequence[int] | None = None,
) -> np.ndarray:
    """Kendall's τ_b between ICL attention to the demonstration tokens and FT attention to the
    training tokens, per example and layer (and head):

        τ = kendalltau(softmax(a_ICL), softmax(a_FT))   over the demonstration tokens

    Inputs: pre-softmax scores ``[example, layer, n]`` or ``[example, layer, head, n]``, token i
    of the ICL demonstrations aligned with training token i. The official code
    (``compute_training_example_attn.py``) sums the ICL scores over heads and uses
    :func:`finetuning_scores` for FT, then softmaxes both. ``segments`` (token counts per
    demonstration) gives the example level: softmax probabilities summed per demonstration.
    Constant inputs give ``nan`` (scipy).
    """
    icl, ft = _kendall_inputs(icl_attention_to_demos, ft_attention_to_train, segments)
    return kendall_tau_b(icl, ft)


def kendall_random_baseline(
    icl_attention_to_demos: Any, rng: Any = 0, *, segments: Sequence[int] | None = None
) -> np.ndarray:
    """Kendall's τ_b between the ICL attention and a random map U ~ Uniform[0, 1)^n, one
    ``rng.random(n)`` per example and layer (and head) in C order, as the official
    ``random_kendall``; ``rng`` as in :func:`simaou_random_baseline`."""
    icl, _ = _kendall_inputs(icl_attention_to_demos, icl_attention_to_demos, segments)
    rng, random_maps = _as_rng(rng), np.empty_like(icl)
    for index in np.ndindex(*icl.shape[:-1]):
        random_maps[index] = rng.random(icl.shape[-1:])
    return kendall_tau_b(icl, random_maps)


def _kendall_inputs(icl: Any, ft: Any, segments) -> tuple[np.ndarray, np.ndarray]:
    same, icl, ft = icl is ft, _np(icl), _np(ft)  # the baselines pass one array as both
    if icl.shape != ft.shape or icl.ndim not in (3, 4):
        raise ValueError(
            f"kendall needs two [example, layer, (head,) n] arrays; got {icl.shape}, {ft.shape}."
        )
    p_icl = _segment_sums(_softmax(icl), segments)
    return p_icl, p_icl if same else _segment_sums(_softmax(ft), segments)


def _top(p: np.ndarray, k: int) -> np.ndarray:
    """The official top-k: ``np.argsort(-p)[:k]`` (numpy's default sort breaks ties), per row of
    the last axis."""
    return np.argsort(-p, axis=-1)[..., :k]


def _check_topk(n: int, k: int, segments) -> None:
    if k < 1:
        raise ValueError(f"top-k recall needs k ≥ 1; got k = {k}.")
    if n < k:
        items = "demonstrations" if segments is not None else "demonstration tokens"
        raise MetricNotApplicableError(
            f"top-{k} recall needs at least {k} {items}, there are {n} (the official "
            "compute_training_example_attn.py fails with an IndexError here).")


def topk_recall(
    icl_attention_to_demos: Any, ft_attention_to_train: Any, k: int, *,
    segments: Sequence[int] | None = None,
) -> np.ndarray:
    """Top-k recall, per example and layer (and head): the share of the ICL top-k found in the
    FT top-k,

        recall = |top_k(p_ICL) ∩ top_k(p_FT)| / k,   p = softmax(a) (summed per demonstration)

    Inputs and ``segments`` as :func:`kendall`; Dai: k = 100 tokens, k = 5 demonstrations
    (:data:`TOPK`). Raises :class:`MetricNotApplicableError` with fewer than k items.
    """
    icl, ft = _kendall_inputs(icl_attention_to_demos, ft_attention_to_train, segments)
    _check_topk(icl.shape[-1], k, segments)
    out = np.empty(icl.shape[:-1])
    for index in np.ndindex(*out.shape):
        out[index] = np.isin(_top(icl[index], k), _top(ft[index], k)).sum() / k
    return out


def topk_recall_random_baseline(
    ft_attention_to_train: Any, k: int, rng: int | np.integer | random.Random = 0, *,
    segments: Sequence[int] | None = None,
) -> np.ndarray:
    """Top-k recall of random picks, per example and layer (and head): the share of k uniform
    indices, drawn with replacement by ``rng.randint(0, n − 1)`` (k per example and layer, in C
    order, as the official ``random_recall_topk``), that fall in top_k(p_FT). ``rng``: an int
    seed (``random.Random(seed)``, the official ``random.randint`` after ``random.seed(seed)``)
    or a ``random.Random``, left where those ``randint`` calls leave it (the draws are made in
    one go by :func:`~dualform.core.official_random.randints`, value for value the same)."""
    _, ft = _kendall_inputs(ft_attention_to_train, ft_attention_to_train, segments)
    n = ft.shape[-1]
    _check_topk(n, k, segments)
    rng = random.Random(int(rng)) if isinstance(rng, int | np.integer) else rng
    rows = ft.reshape(-1, n)
    draws = randints(rng, n, rows.shape[0] * k).reshape(rows.shape[0], k)
    in_top = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(in_top, _top(rows, k), True, axis=-1)
    hits = np.take_along_axis(in_top, draws, axis=-1).sum(axis=-1)
    return (hits / k).reshape(ft.shape[:-1])


def training_attention(
    icl_attention_to_demos: Any, ft_attention_to_train: Any, segments: Sequence[int], *,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray | str]]:
    """``compute_training_example_attn.py`` in one call. Per level (``"example"``, then
    ``"token"``): ``kendall``, ``kendall_random``, ``recall``, ``recall_random`` per example and
    layer (``[example, layer, n]`` inputs), or a string saying why a recall does not apply.

    The random baselines come from the official streams, drawn in the official order, so they
    equal the script's after ``np.random.seed(seed); random.seed(seed)``: numpy — two
    ``[example, layer, n_demos]`` placeholder arrays the script fills and overwrites, the
    example-level Kendall draws, the token-level ones; Python — the example-level recall draws,
    then the token-level ones.
    """
    icl, ft = _np(icl_attention_to_demos), _np(ft_attention_to_train)
    stream, picks = official_stream(seed), random.Random(seed)
    out: dict[str, dict[str, np.ndarray | str]] = {}
    for level, seg in (("example", segments), ("token", None)):
        if level == "example":
            for _ in range(2):  # the script's np.random.random placeholders
                stream.random([icl.shape[0], icl.shape[1], len(segments)])
        res: dict[str, np.ndarray | str] = {}
        try:
            res["recall"] = topk_recall(icl, ft, TOPK[level], segments=seg)
            res["recall_random"] = topk_recall_random_baseline(ft, TOPK[level], picks, segments=seg)
        except MetricNotApplicableError as err:
            res["recall"] = res["recall_random"] = str(err)
        res["kendall"] = kendall(icl, ft, segments=seg)
        res["kendall_random"] = kendall_random_baseline(icl, stream, segments=seg)
        out[level] = res
    return out


# --------------------------------------------------------------------------- reductions


def layer_mean(values: Any) -> Float[np.ndarray, " layer"]:
    """``[example, layer]`` → mean over examples; ``[example, layer, head]`` → mean over heads,
    then examples (the official order)."""
    values = _np(values)
    if values.ndim == 3:
        values = values.mean(axis=2)
    if values.ndim != 2:
        raise ValueError(f"Expected [example, layer(, head)] values; got shape {values.shape}.")
    return values.mean(axis=0)


def head_mean(values: Any) -> Float[np.ndarray, "layer head"]:
    """``[example, layer, head]`` → mean over examples, per layer and head."""
    values = _np(values)
    if values.ndim != 3:
        raise ValueError(f"Expected [example, layer, head] values; got shape {values.shape}.")
    return values.mean(axis=0)


def overall(values: Any) -> float:
    """The headline number: :func:`layer_mean`, then the mean over layers."""
    return float(layer_mean(values).mean())
