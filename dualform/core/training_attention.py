"""Kendall's τ and top-k recall: does ICL attend to the demonstrations as finetuning attends to
its training tokens? (Dai et al. 2023, ``compute_training_example_attn.py`` of
``microsoft/LMOps`` understand_icl.)

ICL side: the last query token's pre-softmax scores over the demonstration tokens (summed over
heads); FT side: :func:`finetuning_scores`, the finetuned model's last query against every
training token's query. Both are softmaxed, and ranked per token or, summed per demonstration,
per example (``segments``). Results are unreduced (``[example, layer]``, or with a head axis);
reduce them with :func:`dualform.core.metrics.layer_mean` and ``overall``.

**Official conventions** (each deviation is an option or the caller's choice):

* the finetuning map multiplies *scaled* queries, ``q_query·q_train / d_head``
  (:func:`finetuning_scores`; ``scaled=False`` for raw ``q·q``);
* the Kendall baselines draw from numpy's legacy stream ``RandomState(seed)`` and the top-k
  recall baseline from Python's ``random.Random(seed)`` (the scripts' ``random.randint``),
  in the script's order (:func:`training_attention`); global random states are never touched;
* which demonstration tokens are ranked (the separators are left out) is decided by the caller
  (``dualform.experiments.dai.conditions.DemoLayout.ranked``).

Checked against a port of the script (see ``tests/test_metrics.py``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from dualform.core.metrics import MetricNotApplicableError, as_float64, as_stream
from dualform.core.official_random import official_stream, randints
from dualform.core.rank import kendall_tau_b

#: The official top-k of ``compute_training_example_attn.py`` per level.
TOPK = {"token": 100, "example": 5}

__all__ = [
    "TOPK", "finetuning_scores", "kendall", "kendall_random_baseline", "kendall_tau_b",
    "topk_recall", "topk_recall_random_baseline", "training_attention",
]


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
    q_query, q_train = as_float64(q_query), as_float64(q_train)
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
    ``random_kendall``; ``rng`` as in :func:`dualform.core.metrics.simaou_random_baseline`."""
    icl, _ = _kendall_inputs(icl_attention_to_demos, icl_attention_to_demos, segments)
    rng, random_maps = as_stream(rng), np.empty_like(icl)
    for index in np.ndindex(*icl.shape[:-1]):
        random_maps[index] = rng.random(icl.shape[-1:])
    return kendall_tau_b(icl, random_maps)


def _kendall_inputs(icl: Any, ft: Any, segments) -> tuple[np.ndarray, np.ndarray]:
    same, icl, ft = icl is ft, as_float64(icl), as_float64(ft)  # the baselines pass one array as both
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
    in_ft_top = np.zeros(ft.shape, dtype=bool)  # every row at once: a top-k holds k distinct items
    np.put_along_axis(in_ft_top, _top(ft, k), True, axis=-1)
    return np.take_along_axis(in_ft_top, _top(icl, k), axis=-1).sum(axis=-1) / k


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
    icl, ft = as_float64(icl_attention_to_demos), as_float64(ft_attention_to_train)
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
