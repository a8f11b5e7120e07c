"""Scoring of one task: modes all / f2t, Kendall and top-k inputs, not-applicable cases.

Records are built from small random arrays (the real dataclasses, no model), so predictions and
the demonstration layout are set by hand; the finetuning texts are checked on a real tokenizer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dualform import load_model
from dualform.core import metrics as M
from dualform.core import training_attention as TA
from dualform.experiments.dai.conditions import (
    DemoLayout,
    PromptPair,
    Record,
    demo_layout,
    demo_training_texts,
    prompt_pair,
)
from dualform.experiments.dai.results import Summary
from dualform.experiments.dai.scoring import F2T_EMPTY, REC2FTP_EMPTY, similarity_metrics
from dualform.tasks.prompts import PromptTokens, load_task, sample_demos

L, H, D_HEAD, D_MODEL = 2, 2, 2, 4
LAYOUT = DemoLayout(n_tokens=(3, 2), n_separator=(1, 1), texts=())  # span of 7, 5 ranked
SPAN = 7


def make_case(correct: dict[str, list[bool]], seed: int = 0):
    """Records of ZSL / ICL / FT for len(correct["zsl"]) queries (gold label 0 for all)."""
    rng = np.random.default_rng(seed)
    n = len(correct["zsl"])
    q_len = rng.integers(2, 5, size=n)
    pairs = [PromptPair(PromptTokens(torch.zeros(1, 1 + SPAN + k, dtype=torch.long), SPAN, 1),
                        PromptTokens(torch.zeros(1, 1 + k, dtype=torch.long), 0, 1)) for k in q_len]
    t = lambda *shape: torch.from_numpy(rng.normal(size=shape)).float()  # noqa: E731
    recs = {}
    for c, ok in correct.items():
        keys = [(1 + SPAN if c == "icl" else 1) + k for k in q_len]
        recs[c] = [Record(label_logits=torch.tensor([1.0, 0.0] if good else [0.0, 1.0]),
                          attn_out=t(L, D_MODEL), z=t(L, H, D_HEAD), scores=t(L, H, keys[i]),
                          q=t(L, H, D_HEAD), icl_update=t(L, H, D_HEAD),
                          norm_delta_w_icl=t(L, H), norm_w_zsl=t(L, H))
                   for i, good in enumerate(ok)]
    train_q = t(L, sum(LAYOUT.n_tokens), H * D_HEAD)
    return recs, np.zeros(n, dtype=int), pairs, train_q


CORRECT = {"zsl": [False, False, False, True, False], "icl": [True, True, False, True, False],
           "ft": [True, True, True, True, False]}


def scored(*args, **kwargs) -> dict:
    """:func:`similarity_metrics` with every :class:`Summary` as stored (a scalar as its mean)."""
    return _plain(similarity_metrics(*args, **kwargs))


def _plain(node):
    if isinstance(node, Summary):
        return node.mean if node.per_layer is None else node.to_json()
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    return node


def test_both_modes_and_official_streams():
    recs, gold, pairs, train_q = make_case(CORRECT)
    out = scored(recs, gold, pairs, train_q, LAYOUT.ranked(), seed=7)
    assert out["rec2ftp"] == pytest.approx(200 / 3) and out["n_ft_fixed"] == 3
    assert out["n_f2t"] == out["f2t"]["n"] == 2
    keep = np.array([True, True, False, False, False])  # ZSL ✗, FT ✓, ICL ✓
    h = {c: torch.stack([r.attn_out for r in rs]).double().numpy() for c, rs in recs.items()}
    for block, sel in ((out, np.ones(5, bool)), (out["f2t"], keep)):
        hs = [h[c][sel] for c in ("zsl", "icl", "ft")]
        assert block["simaou"]["normalized"]["mean"] == pytest.approx(M.overall(M.simaou(*hs)))
        assert block["simaou"]["unnormalized"]["mean"] == pytest.approx(
            M.overall(M.simaou(*hs, normalize=False)))
        # each mode is one compute_sim.py run: a fresh official stream seeded 7
        assert block["simaou"]["random"]["mean"] == pytest.approx(
            M.overall(M.simaou_random_baseline(hs[0], hs[1], 7)))
        assert set(block["simam"]) == {"before", "after", "delta"}
    assert out["f2t"]["simam"]["after"]["mean"] != out["simam"]["after"]["mean"]


def test_kendall_ranks_the_demonstration_tokens_without_separators():
    recs, gold, pairs, train_q = make_case(CORRECT)
    out = scored(recs, gold, pairs, train_q, LAYOUT.ranked(), seed=3)
    ranked = [0, 1, 2, 4, 5]  # span positions; BOS is key 0 of the prompt
    icl = np.stack([r.scores[:, :, 1:1 + SPAN][..., ranked].sum(1).double().numpy() for r in recs["icl"]])
    q = torch.stack([r.q.flatten(-2) for r in recs["ft"]]).double().numpy()
    ft = np.einsum("eld,lnd->eln", q, train_q.double().numpy()) / D_HEAD
    levels = TA.training_attention(icl, ft, (3, 2), seed=3)
    assert out["kendall"]["value"]["mean"] == pytest.approx(M.overall(levels["token"]["kendall"]))
    assert out["kendall"]["example"]["mean"] == pytest.approx(M.overall(levels["example"]["kendall"]))
    assert out["kendall"]["random"]["mean"] == pytest.approx(M.overall(levels["token"]["kendall_random"]))
    unscaled = scored(recs, gold, pairs, train_q, LAYOUT.ranked(), seed=3, scaled_queries=False)
    tau_raw = M.overall(TA.kendall(icl, ft * D_HEAD))
    assert unscaled["kendall"]["value"]["mean"] == pytest.approx(tau_raw)
    # 5 tokens and 2 demonstrations: neither top-100 nor top-5 recall applies
    for level, k in (("token", 100), ("example", 5)):
        entry = out["topk_recall"][level]
        assert entry["k"] == k and f"top-{k} recall needs at least {k}" in entry["not_applicable"]
        assert out["notes"][f"topk_recall.{level}"] == entry["not_applicable"]
    with pytest.raises(ValueError, match="not aligned"):
        similarity_metrics(recs, gold, pairs, train_q, LAYOUT.ranked(keep_separator=True))


def test_no_example_fixed_gives_reasons_not_errors():
    correct = {"zsl": [False, True, False], "icl": [True, True, False], "ft": [False, True, False]}
    recs, gold, pairs, train_q = make_case(correct)
    out = scored(recs, gold, pairs, train_q, LAYOUT.ranked())
    assert out["rec2ftp"] is None and out["n_ft_fixed"] == 0  # NaN, stored as null and out["n_f2t"] == 0
    assert out["f2t"] == {"not_applicable": F2T_EMPTY}
    assert out["notes"]["rec2ftp"] == REC2FTP_EMPTY and out["notes"]["f2t"] == F2T_EMPTY
    assert math.isfinite(out["simaou"]["normalized"]["mean"])  # the all mode is unaffected


@pytest.fixture(scope="module")
def tiny_task():
    model = load_model("tiny-llama")
    task = load_task("afinn-sentiment", seed=0)
    return model, task, sample_demos(task, 3, 1)


def test_finetuning_texts_leave_the_separator_out(tiny_task):
    model, task, demos = tiny_task
    layout = demo_layout(model, task, demos)
    bare = demo_training_texts(model, task, demos)
    kept = demo_training_texts(model, task, demos, keep_separator=True)
    span = prompt_pair(model, task, demos, task.test[0]).icl
    ids = span.tokens[0, span.demo_start : span.demo_start + span.n_demo_tokens]
    assert torch.equal(torch.cat([t[1:] for t in kept]), ids)  # with separators: the whole span
    ranked = list(layout.ranked().positions)
    assert torch.equal(torch.cat([t[1:] for t in bare]), ids[ranked])  # without: the ranked tokens
    newline = model.tokenizer.encode("\n", add_special_tokens=False)
    for b, k, n_sep in zip(bare, kept, layout.n_separator, strict=True):
        assert n_sep == 1 and torch.equal(k[:-1], b) and k[-1].item() == newline[-1]
