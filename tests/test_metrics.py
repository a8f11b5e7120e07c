"""Metrics: tiny hand-computed cases, then agreement with ports of the official code.

Official code compared with (ported below into test-only ``official_*`` functions, kept as close
to the original lines as possible; only file I/O and printing are replaced by arguments and
return values):

* ``microsoft/LMOps`` ``understand_icl/icl_ft/compute_sim.py`` (commit e0032a2):
  ``cal_cos_sim``, ``norm_hidden``, ``check_answer``, ``count_f2t`` (Rec2FTP),
  ``analyze_sim`` (SimAOU and its random baseline, modes ``all``/``f2t``) and
  ``analyze_attn_map`` (SimAM "ZSL" = cos(ICL, ZSL) and cos(ICL, FT), raw scores, zero padding).
* ``microsoft/LMOps`` ``understand_icl/icl_ft/compute_training_example_attn.py`` (commit
  567d1ee): ``slice_icl_attn_map``, ``compact_ft_attn_q``, ``np_softmax`` and the Kendall part
  of ``compute_training_attn`` (token and example level, and the random baseline).
* ``GiilDe/ft-vs-icl`` ``scripts/metrics.py`` (HEAD 1952ce3): ``analyze_sim`` with
  ``normalize=False`` (unnormalised SimAOU) and ``analyze_attn_map(diff=True)`` (SimAM_Δ); torch
  float32 there, so agreement is to 1e-5.

The random fixture (``tests/fixtures/metrics_fixture.npz``: inputs and the ports' outputs) is
written by ``python tests/test_metrics.py``; the tests check that the ports still give the
stored values and that ``dualform.core.metrics`` gives the same numbers.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from dualform.core import metrics as M
from dualform.core import official_random as R
from dualform.core import training_attention as TA
from dualform.experiments.dai.conditions import DemoLayout, RankedTokens

FIXTURE = Path(__file__).parent / "fixtures" / "metrics_fixture.npz"


# =========================================================================== hand-computed cases


def test_accuracy_in_percent():
    assert M.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 75.0
    assert M.accuracy(torch.tensor([2, 2]), np.array([2, 2])) == 100.0
    with pytest.raises(ValueError):
        M.accuracy([1, 2], [1])


def test_rec2ftp_counts_examples_finetuning_fixes():
    zsl = [False, False, False, True, False]
    ft = [True, True, True, True, False]
    icl = [True, False, True, False, True]
    # FT ✓ ∧ ZSL ✗: examples 0, 1, 2; ICL also ✓ on 0 and 2 → 2/3.
    assert M.rec2ftp(zsl, icl, ft) == pytest.approx(200 / 3)
    assert M.f2t_mask(zsl, icl, ft).tolist() == [True, False, True, False, False]
    assert math.isnan(M.rec2ftp(zsl, icl, [False] * 5))


def test_simaou_normalised_and_not():
    h_zsl, h_icl, h_ft = [[[1.0, 0.0]]], [[[0.0, 1.0]]], [[[2.0, 2.0]]]  # [example, layer, d]
    # normalised: ĥ_FT = (1, 1)/√2, cos((−1, 1), (1/√2 − 1, 1/√2)) = cos(22.5°)
    assert M.simaou(h_zsl, h_icl, h_ft)[0, 0] == pytest.approx(math.cos(math.pi / 8))
    # unnormalised: cos((−1, 1), (1, 2)) = 1/√10
    assert M.simaou(h_zsl, h_icl, h_ft, normalize=False)[0, 0] == pytest.approx(1 / math.sqrt(10))
    per_head = M.simaou(torch.ones(3, 2, 4, 5), torch.rand(3, 2, 4, 5), torch.rand(3, 2, 4, 5))
    assert per_head.shape == (3, 2, 4)


def test_simaou_random_baseline_uses_uniform_updates():
    h_zsl, h_icl = np.zeros((2, 1, 2)), np.array([[[1.0, -1.0]], [[2.0, 2.0]]])
    got = M.simaou_random_baseline(h_zsl, h_icl, np.random.RandomState(5), normalize=False)
    u = np.random.RandomState(5).random((2, 1, 2))
    assert got[0, 0] == pytest.approx((u[0, 0, 0] - u[0, 0, 1]) / (math.sqrt(2) * np.linalg.norm(u[0, 0])))
    assert got[1, 0] == pytest.approx(u[1, 0].sum() / (math.sqrt(2) * np.linalg.norm(u[1, 0])))
    assert np.array_equal(M.simaou_random_baseline(h_zsl, h_icl, 3), M.simaou_random_baseline(h_zsl, h_icl, 3))


def test_simam_is_scale_free_and_ignores_left_padding():
    a = [np.array([[[1.0, 2.0, 3.0]]]), np.array([[[1.0, 0.0]]])]  # ragged [layer, head, q_i]
    b = [np.array([[[2.0, 4.0, 6.0]]]), np.array([[[0.0, 1.0]]])]
    assert M.simam(a, b)[:, 0, 0] == pytest.approx([1.0, 0.0])
    assert M.pad_left(a)[1].tolist() == [[[0.0, 1.0, 0.0]]]
    with pytest.raises(ValueError, match="same number of query tokens"):
        M.simam(a, [b[0], np.ones((1, 1, 3))])


def test_simam_delta_compares_score_changes():
    icl, zsl = np.array([[[[1.0, 2.0]]]]), np.array([[[[1.0, 1.0]]]])
    assert M.simam_delta(icl, zsl, np.array([[[[1.0, 3.0]]]]))[0, 0, 0] == pytest.approx(1.0)
    assert M.simam_delta(icl, zsl, np.array([[[[2.0, 1.0]]]]))[0, 0, 0] == pytest.approx(0.0)


def test_kendall_token_and_example_level():
    icl = np.array([[[3.0, 0.0, 1.0, 2.0]]])  # [example, layer, n]
    ft = np.array([[[3.0, 0.0, 2.0, 1.0]]])
    # 6 pairs, one discordant (tokens 2 and 3): τ = (5 − 1) / 6
    assert TA.kendall(icl, ft)[0, 0] == pytest.approx(2 / 3)
    # demonstrations of 1, 1 and 2 tokens: probabilities summed per demo rank alike → τ = 1
    assert TA.kendall(icl, ft, segments=[1, 1, 2])[0, 0] == pytest.approx(1.0)
    assert TA.kendall(np.stack([icl, ft], 2), np.stack([ft, ft], 2)).shape == (1, 1, 2)
    with pytest.raises(ValueError, match="segments"):
        TA.kendall(icl, ft, segments=[1, 1])


def test_vectorised_kendall_equals_scipy_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=(40, 3, 25)).astype(float)  # many ties
    y = np.where(rng.random((40, 3, 25)) < 0.5, x, rng.normal(size=(40, 3, 25)))
    x[0, 0], y[1, 0] = 1.0, 2.0  # constant rows
    y[2, 1, 3] = np.nan
    expected = np.array([scipy.stats.kendalltau(a, b)[0] for a, b in
                         zip(x.reshape(-1, 25), y.reshape(-1, 25), strict=True)]).reshape(40, 3)
    got = TA.kendall_tau_b(x, y)
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got[0, 0]) and np.isnan(got[1, 0]) and np.isnan(got[2, 1])


def test_simam_delta_is_undefined_where_a_change_is_rounding():
    """A change no larger than rounding gives nan, not the cosine of two rounding errors; the
    reductions skip it only when asked (elsewhere nan spreads, as in the official code)."""
    zsl = np.array([[[[4.0, 2.0]], [[4.0, 2.0]]]])  # [example, layer, head, q]: 2 layers
    icl = zsl + np.array([[[[0.0, 1e-9]], [[1.0, 0.0]]]])  # layer 0: ICL changes nothing
    ft = zsl + np.array([[[[1.0, 0.0]], [[2.0, 0.0]]]])
    got = M.simam_delta(icl, zsl, ft)
    assert np.isnan(got[0, 0, 0]) and got[0, 1, 0] == pytest.approx(1.0)
    assert np.isnan(M.simam_delta(icl, zsl, zsl)).all()  # FT changes nothing either
    assert M.simam_delta(icl, zsl, ft, rtol=0.0)[0, 0, 0] == pytest.approx(0.0)  # noise, if forced
    assert np.isnan(M.overall(got))
    assert M.overall(got, skip_undefined=True) == pytest.approx(1.0)
    np.testing.assert_array_equal(M.layer_mean(got, skip_undefined=True), [np.nan, 1.0])
    np.testing.assert_array_equal(M.head_mean(got, skip_undefined=True), [[np.nan], [1.0]])


def test_mean_of_defined_is_nanmean_without_a_warning():
    import warnings

    values = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = M.mean_of_defined(values, axis=1)
        assert M.mean_of_defined(values) == pytest.approx(2.0)
    np.testing.assert_array_equal(got, [2.0, np.nan])
    rng = np.random.default_rng(0).normal(size=(5, 7))
    np.testing.assert_array_equal(M.mean_of_defined(rng, axis=0), np.nanmean(rng, axis=0))


def test_icl_leaves_layer_0_scores_of_the_query_unchanged_on_smollm2(smol):
    """The model's own activations: SmolLM2 (rotary, no position in its embeddings) scores the
    query tokens at layer 0 alike with and without demonstrations (relative positions only), to
    float32 rounding — so SimAM_Δ is undefined there and defined from layer 1 on."""
    from dualform.probes import capture

    query = smol.to_tokens(" great movie\nSentiment:", prepend_bos=False)
    demos = smol.to_tokens("Review: awful film\nSentiment: negative\nReview:", prepend_bos=False)
    bos = torch.tensor([[smol.tokenizer.bos_token_id]])
    n = query.shape[-1]
    scores = {}
    for name, tokens in (("icl", torch.cat([bos, demos, query], -1)), ("zsl", torch.cat([bos, query], -1))):
        cap = capture(smol, tokens, hooks=("attn_scores",))
        scores[name] = np.stack([cap.get("attn_scores", layer)[0, :, -1, -n:].double().numpy()
                                 for layer in range(3)])[None]  # [1, layer, head, q]
    zsl = scores["zsl"]
    change = np.linalg.norm(scores["icl"] - zsl, axis=-1) / np.linalg.norm(zsl, axis=-1)
    assert change[0, 0].max() < 1e-5 and change[0, 1:].min() > 1e-2
    ft = zsl + np.random.default_rng(0).normal(size=zsl.shape)
    got = M.simam_delta(scores["icl"], zsl, ft)
    assert np.isnan(got[0, 0]).all() and np.isfinite(got[0, 1:]).all()


def test_inversions_count_every_discordant_pair():
    """The flat Fenwick trees of ``_inversions`` against a brute-force count, for lengths around
    powers of two (the trees' edge) and rows with ties."""
    from dualform.core.rank import _inversions

    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 8, 9, 16, 31, 33):
        seq = rng.integers(0, n, size=(50, n))
        brute = [(row[:, None] > row[None, :])[np.triu_indices(n, 1)].sum() for row in seq]
        np.testing.assert_array_equal(_inversions(seq), brute)


def test_kendall_finetuning_map_uses_scaled_queries():
    """Official: q_query·q_train / d_head (recorded queries carry 1/√d_head each)."""
    q_query, q_train = np.array([[[1.0, 2.0]]]), np.array([[[3.0, 0.0], [0.0, 1.0]]])
    assert TA.finetuning_scores(q_query, q_train, d_head=2).tolist() == [[[1.5, 1.0]]]
    assert TA.finetuning_scores(q_query, q_train, d_head=2, scaled=False).tolist() == [[[3.0, 2.0]]]
    # raw scores 0, −800, −900, −1000 underflow to probabilities 1, 0, 0, 0: three FT ties, so
    # τ_b = (3 − 0) / √(6 · 3) = 1/√2 against ICL 4 > 3 > 2 > 1; scaled by 1/64 they stay
    # distinct (0, −12.5, −14.1, −15.6) and τ = 1.
    icl, raw = np.array([[[4.0, 3.0, 2.0, 1.0]]]), np.array([[[0.0, -800.0, -900.0, -1000.0]]])
    assert TA.kendall(icl, raw)[0, 0] == pytest.approx(1 / math.sqrt(2))
    assert TA.kendall(icl, raw / 64)[0, 0] == pytest.approx(1.0)


def test_ranked_tokens_leave_the_separators_out():
    """Two demonstrations of 2 and 3 tokens, each followed by a 1-token separator: span
    [a a | b b b |]; official ranks positions 0 1 3 4 5 (segments 2, 3); keeping: all 7."""
    layout = DemoLayout(n_tokens=(2, 3), n_separator=(1, 1), texts=())
    assert layout.ranked() == RankedTokens((0, 1, 3, 4, 5), (2, 3))
    assert layout.ranked(keep_separator=True) == RankedTokens((0, 1, 2, 3, 4, 5, 6), (3, 4))


def test_random_baselines_use_the_official_streams():
    """Seed s gives the values of ``np.random.seed(s); np.random.random(...)`` and of
    ``random.seed(s); random.randint(...)`` bit for bit, leaving the global streams alone."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        np.random.seed(5)
        expected = np.random.random((2, 3))
        random.seed(5)
        picks = [random.randint(0, 3) for _ in range(4)]
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    assert np.array_equal(M.official_stream(5).random((2, 3)), expected)
    # top-2 recall of random picks over 4 tokens whose FT top-2 is {0, 1}: hits / 2 per draw pair
    ft = np.array([[[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]]])  # [example, layer, n]
    got = TA.topk_recall_random_baseline(ft, 2, 5)
    assert got.tolist() == [[sum(p < 2 for p in picks[:2]) / 2, sum(p < 2 for p in picks[2:]) / 2]]


def reference_randints(rng, n, count):
    """The draws ``randints`` replaces: one ``randint`` call each."""
    return [rng.randint(0, n - 1) for _ in range(count)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 600, 1000, 2**20 + 3, 2**31 + 1, 2**32 - 1, 2**32 + 5])
@pytest.mark.parametrize("chunk", [7, R._CHUNK])
def test_randints_are_the_randint_calls_and_leave_the_same_state(n, chunk, monkeypatch):
    """Values, order and the generator's state afterwards (Mersenne-Twister words, position and
    the cached gauss) equal ``count`` ``randint(0, n − 1)`` calls, and the streams stay equal after;
    a tiny chunk makes the rejection loop cross chunk boundaries; n > 2**32 is drawn one by one."""
    monkeypatch.setattr(R, "_CHUNK", chunk)
    ours, theirs = random.Random(n), random.Random(n)
    for r in (ours, theirs):
        r.random(), r.gauss()  # mid-block position, a cached gauss value
    for count in (0, 1, 5, 700, 1500):  # 700 + … crosses the 624-word block boundary
        got = R.randints(ours, n, count)
        assert got.dtype == np.int64 and got.tolist() == reference_randints(theirs, n, count)
        assert ours.getstate() == theirs.getstate()
    assert [ours.random(), ours.gauss(), ours.getrandbits(40)] == [
        theirs.random(), theirs.gauss(), theirs.getrandbits(40)]


def test_randints_of_other_generators_are_their_own_calls():
    class Shifted(random.Random):
        def randint(self, a, b):
            return b - super().randint(a, b)

    got = R.randints(Shifted(2), 10, 50)
    assert got.tolist() == reference_randints(Shifted(2), 10, 50)
    with pytest.raises(ValueError):
        R.randints(random.Random(0), 0, 3)  # randint(0, −1), as one by one


def reference_topk_recall_random_baseline(ft, k, rng, segments=None):
    """The per-row loop the vectorised baseline replaces (one Python ``randint`` per pick)."""
    _, p = TA._kendall_inputs(ft, ft, segments)
    out = np.empty(p.shape[:-1])
    for index in np.ndindex(*out.shape):
        top = set(np.argsort(-p[index])[:k].tolist())
        out[index] = sum(rng.randint(0, p.shape[-1] - 1) in top for _ in range(k)) / k
    return out


@pytest.mark.parametrize("shape", [(6, 4, 130), (3, 2, 4, 130)])  # [example, layer, (head,) n]
def test_topk_recall_random_baseline_equals_the_loop(shape):
    """Example level (segments, k = 5) then token level (k = 100) through one generator, as
    ``training_attention``: equal values and generator state after each call; ties (rounded
    scores, saturated rows) ranked as ``np.argsort``."""
    rng = np.random.default_rng(1)
    ft = np.round(rng.normal(size=shape), 1)
    ft[0] *= 400  # exact-0 probabilities tie
    segments = [13] * 10
    ours, theirs = random.Random(4), random.Random(4)
    for k, seg in ((5, segments), (100, None), (3, None)):
        got = TA.topk_recall_random_baseline(ft, k, ours, segments=seg)
        np.testing.assert_array_equal(got, reference_topk_recall_random_baseline(ft, k, theirs, seg))
        assert got.shape == shape[:-1] and ours.getstate() == theirs.getstate()
    seeded = TA.topk_recall_random_baseline(ft, 100, np.int64(9))
    np.testing.assert_array_equal(seeded, TA.topk_recall_random_baseline(ft, 100, 9))
    np.testing.assert_array_equal(seeded, reference_topk_recall_random_baseline(ft, 100, random.Random(9)))
    with pytest.raises(ValueError, match="k ≥ 1"):
        TA.topk_recall_random_baseline(ft, 0, 9)


@pytest.mark.parametrize("shape", [(6, 4, 130), (3, 2, 4, 130)])  # [example, layer, (head,) n]
def test_topk_recall_equals_the_official_loop(shape):
    """All rows at once equal the official per-row ``np.isin(top_icl, top_ft)`` loop, ties
    (rounded scores, saturated rows) included, at token and example level."""
    rng = np.random.default_rng(2)
    icl, ft = np.round(rng.normal(size=shape), 1), np.round(rng.normal(size=shape), 1)
    icl[0] *= 400  # exact-0 probabilities tie
    for k, seg in ((5, [13] * 10), (100, None), (3, None)):
        p_icl, p_ft = TA._kendall_inputs(icl, ft, seg)
        loop = np.empty(p_icl.shape[:-1])
        for index in np.ndindex(*loop.shape):
            loop[index] = np.isin(np.argsort(-p_icl[index])[:k], np.argsort(-p_ft[index])[:k]).sum() / k
        np.testing.assert_array_equal(TA.topk_recall(icl, ft, k, segments=seg), loop)


def test_topk_recall_worked_example():
    icl = np.array([[[5.0, 4.0, 3.0, 2.0, 1.0]]])  # ICL top-2 = {0, 1}
    ft = np.array([[[5.0, 1.0, 4.0, 2.0, 3.0]]])  # FT top-2 = {0, 2}; top-3 = {0, 2, 4}
    assert TA.topk_recall(icl, ft, 2)[0, 0] == 0.5
    assert TA.topk_recall(icl, ft, 3)[0, 0] == pytest.approx(2 / 3)  # ICL {0, 1, 2}
    # demonstrations of 2, 2, 1 tokens: summed probabilities rank demo 0 first for both
    assert TA.topk_recall(icl, ft, 1, segments=[2, 2, 1])[0, 0] == 1.0
    with pytest.raises(M.MetricNotApplicableError, match="at least 6 demonstration tokens"):
        TA.topk_recall(icl, ft, 6)


def test_reductions_follow_the_official_order():
    values = np.array([[[1.0, 3.0], [0.0, 0.0]], [[3.0, 5.0], [2.0, 2.0]]])  # [ex, layer, head]
    assert M.head_mean(values).tolist() == [[2.0, 4.0], [1.0, 1.0]]
    assert M.layer_mean(values).tolist() == [3.0, 1.0]
    assert M.overall(values) == 2.0
    assert M.layer_mean(values[:, :, 0]).tolist() == [2.0, 1.0]


# =========================================================================== official ports
# --- port of microsoft/LMOps understand_icl/icl_ft/compute_sim.py (test-only reference) -------


def official_cal_cos_sim(v1, v2):
    num = (v1 * v2).sum(axis=-1)  # dot product
    denom = np.linalg.norm(v1, axis=-1) * np.linalg.norm(v2, axis=-1) + 1e-20  # length
    res = num / denom
    return res


def official_check_answer(info_item):
    return info_item['gold_label'] == info_item['pred_label']


def official_norm_hidden(hidden):
    norm = np.linalg.norm(hidden, axis=-1) + 1e-20  # length
    norm = norm[:, :, np.newaxis]
    hidden = hidden / norm
    return hidden


def official_count_f2t(zs_info, icl_info, ftzs_info):
    num_both_f2t = 0
    num_ftzs_f2t = 0
    n_examples = len(zs_info)
    for i in range(n_examples):
        if not official_check_answer(zs_info[i]) and official_check_answer(ftzs_info[i]):
            num_ftzs_f2t += 1
        if not official_check_answer(zs_info[i]) and official_check_answer(ftzs_info[i]) and official_check_answer(icl_info[i]):
            num_both_f2t += 1
    recall = num_both_f2t / num_ftzs_f2t * 100
    return recall


def _select(zs_info, icl_info, ftzs_info, mode, key):
    if mode == 'all':
        return ([item[key] for item in zs_info], [item[key] for item in icl_info],
                [item[key] for item in ftzs_info])
    zs, icl, ftzs = [], [], []
    for i in range(len(zs_info)):
        if not official_check_answer(zs_info[i]) and official_check_answer(ftzs_info[i]) and official_check_answer(icl_info[i]):
            zs.append(zs_info[i][key])
            icl.append(icl_info[i][key])
            ftzs.append(ftzs_info[i][key])
    return zs, icl, ftzs


def official_analyze_sim(zs_info, icl_info, ftzs_info, mode, key, normalize=False):
    zs_hidden, icl_hidden, ftzs_hidden = (np.array(h) for h in _select(zs_info, icl_info, ftzs_info, mode, key))
    if normalize:
        zs_hidden = official_norm_hidden(zs_hidden)
        icl_hidden = official_norm_hidden(icl_hidden)
        ftzs_hidden = official_norm_hidden(ftzs_hidden)
    icl_updates = icl_hidden - zs_hidden  # n_examples, n_layers, hidden_dim
    ftzs_updates = ftzs_hidden - zs_hidden
    cos_sim = official_cal_cos_sim(icl_updates, ftzs_updates)
    cos_sim = cos_sim.mean(axis=0)
    random_updates = np.random.random(ftzs_updates.shape)
    baseline_cos_sim = official_cal_cos_sim(icl_updates, random_updates)
    baseline_cos_sim = baseline_cos_sim.mean(axis=0)
    return cos_sim, baseline_cos_sim  # per layer; the script prints .mean() of each


def official_analyze_attn_map(zs_info, icl_info, ftzs_info, mode, key, softmax=False):
    zs_attn_map, icl_attn_map, ftzs_attn_map = (copy.deepcopy(m) for m in _select(zs_info, icl_info, ftzs_info, mode, key))
    max_zs_len = -1
    n_examples = len(zs_attn_map)
    n_layers = len(zs_attn_map[0])
    n_heads = len(zs_attn_map[0][0])
    for i in range(n_examples):
        if len(zs_attn_map[i][0][0]) > max_zs_len:
            max_zs_len = len(zs_attn_map[i][0][0])
    pad_value = -1e20 if softmax else 0
    for i in range(n_examples):
        for j in range(n_layers):
            for k in range(n_heads):
                pad_len = max_zs_len - len(zs_attn_map[i][j][k])
                zs_attn_map[i][j][k] = [pad_value] * pad_len + zs_attn_map[i][j][k]
                icl_attn_map[i][j][k] = [pad_value] * pad_len + icl_attn_map[i][j][k]
                ftzs_attn_map[i][j][k] = [pad_value] * pad_len + ftzs_attn_map[i][j][k]
    zs_attn_map = np.array(zs_attn_map)  # n_examples, n_layers, n_heads, len
    icl_attn_map = np.array(icl_attn_map)
    ftzs_attn_map = np.array(ftzs_attn_map)
    sim_zs = official_cal_cos_sim(icl_attn_map, zs_attn_map).mean(axis=2).mean(axis=0)
    sim_ft = official_cal_cos_sim(icl_attn_map, ftzs_attn_map).mean(axis=2).mean(axis=0)
    return sim_zs, sim_ft  # 'ZSL SimAM' and 'SimAM', per layer


# --- port of microsoft/LMOps understand_icl/icl_ft/compute_training_example_attn.py ----------


def official_slice_icl_attn_map(icl_attn_map_ctx, ft_attn_q):
    n_example = len(ft_attn_q)
    example_len = []
    for i in range(n_example):
        example_len.append(len(ft_attn_q[i][0]) - 1)
    slice_idx = []
    stored_slice_range = []
    cur_pos = 1
    for i in range(n_example):
        new_range = list(range(cur_pos, cur_pos + example_len[i]))
        slice_idx.extend(new_range)
        cur_pos += example_len[i] + 1
    cur_pos = 0
    for i in range(n_example):
        new_range = list(range(cur_pos, cur_pos + example_len[i]))
        stored_slice_range.append(new_range)
        cur_pos += example_len[i]
    icl_attn_map_ctx = icl_attn_map_ctx[:, :, slice_idx]
    return icl_attn_map_ctx, stored_slice_range


def official_compact_ft_attn_q(ft_attn_q):
    n_examples = len(ft_attn_q)
    n_layers = len(ft_attn_q[0])
    compacted_ft_attn_q = []
    for i in range(n_layers):
        layer_ft_attn_q = []
        for j in range(n_examples):
            cur_len = len(ft_attn_q[j][i])
            for k in range(1, cur_len):
                q_vector = ft_attn_q[j][i][k]
                layer_ft_attn_q.append(q_vector)
        compacted_ft_attn_q.append(layer_ft_attn_q)
    return compacted_ft_attn_q


def official_np_softmax(x, axis=-1):
    x -= np.max(x, axis=axis, keepdims=True)
    x = np.exp(x) / np.sum(np.exp(x), axis=axis, keepdims=True)
    return x


def official_compute_training_attn(ft_attn_q, ftzs_attn_q, icl_attn_map_ctx, level='token'):
    """``compute_training_attn`` line for line (the global ``np.random`` and ``random`` streams
    as there); returns the per-layer ``save_rlts`` entries instead of writing them."""
    save_rlts = {}
    icl_attn_map_ctx, stored_slice_range = official_slice_icl_attn_map(np.array(icl_attn_map_ctx), ft_attn_q)
    ft_attn_q = np.array(official_compact_ft_attn_q(ft_attn_q))  # (n_layers, tot_len, q_hidden_dim)
    expand_ftzs_attn_q = np.array(ftzs_attn_q)[:, :, np.newaxis, :]
    expand_ft_attn_q = ft_attn_q[np.newaxis, :, :, :]
    ftzs_attn_map = (expand_ft_attn_q * expand_ftzs_attn_q).sum(axis=-1)  # (n_example, n_layers, tot_len)
    icl_attn_map = official_np_softmax(icl_attn_map_ctx, axis=-1)
    ftzs_attn_map = official_np_softmax(ftzs_attn_map, axis=-1)
    if level == 'example':
        n_example = len(stored_slice_range)
        tmp_ftzs_attn_map = np.random.random([ftzs_attn_map.shape[0], ftzs_attn_map.shape[1], n_example])
        tmp_icl_attn_map = np.random.random([ftzs_attn_map.shape[0], ftzs_attn_map.shape[1], n_example])
        for i, slice_range in enumerate(stored_slice_range):
            tmp_ftzs_attn_map[:, :, i] = ftzs_attn_map[:, :, slice_range].sum(axis=-1)
            tmp_icl_attn_map[:, :, i] = icl_attn_map[:, :, slice_range].sum(axis=-1)
        ftzs_attn_map = tmp_ftzs_attn_map
        icl_attn_map = tmp_icl_attn_map
    # =================== analyze recall of attention top-k ========================
    topk_k = 5 if level == 'example' else 100
    recall_topk = [0 for i in range(icl_attn_map.shape[1])]
    random_recall_topk = [0 for i in range(icl_attn_map.shape[1])]
    total_topk = 0
    for i in range(icl_attn_map.shape[0]):
        for j in range(icl_attn_map.shape[1]):
            ftzs_topk = np.argsort(-ftzs_attn_map[i][j])[:topk_k].tolist()
            icl_topk = np.argsort(-icl_attn_map[i][j])[:topk_k].tolist()
            for l in range(topk_k):  # noqa: E741 (the original's name)
                if icl_topk[l] in ftzs_topk:
                    recall_topk[j] += 1
                random_idx = random.randint(0, icl_attn_map.shape[2] - 1)
                if random_idx in ftzs_topk:
                    random_recall_topk[j] += 1
            total_topk += topk_k
    total_topk /= icl_attn_map.shape[1]
    recall_topk = [recall_topk[i] / total_topk for i in range(icl_attn_map.shape[1])]
    random_recall_topk = [random_recall_topk[i] / total_topk for i in range(icl_attn_map.shape[1])]
    save_rlts[f'{level}-level recall_topk'] = recall_topk
    save_rlts[f'{level}-level random_recall_topk'] = random_recall_topk
    # =================== analyze kendall of attention weights ========================
    kendall = [0 for i in range(len(icl_attn_map[0]))]
    random_kendall = [0 for i in range(len(icl_attn_map[0]))]
    for i in range(icl_attn_map.shape[0]):
        for j in range(icl_attn_map.shape[1]):
            cur_icl_map = np.array(icl_attn_map[i][j])
            cur_ftzs_map = np.array(ftzs_attn_map[i][j])
            random_map = np.random.random(ftzs_attn_map[i][j].shape)
            kendall[j] += scipy.stats.kendalltau(cur_icl_map, cur_ftzs_map)[0]
            random_kendall[j] += scipy.stats.kendalltau(cur_icl_map, random_map)[0]
    kendall = [kendall[i] / icl_attn_map.shape[0] for i in range(icl_attn_map.shape[1])]
    random_kendall = [random_kendall[i] / icl_attn_map.shape[0] for i in range(icl_attn_map.shape[1])]
    save_rlts[f'{level}-level kendall'] = kendall
    save_rlts[f'{level}-level random_kendall'] = random_kendall
    return save_rlts


def official_training_attn_script(ft_attn_q, ftzs_attn_q, icl_attn_map_ctx, seed):
    """The script's two calls (example level, then token level) after seeding both global
    streams with ``seed`` (the script itself never seeds); the streams are restored after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        np.random.seed(seed)
        random.seed(seed)
        out = {}
        for level in ('example', 'token'):
            out |= official_compute_training_attn(ft_attn_q, ftzs_attn_q, icl_attn_map_ctx, level)
        return out
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# --- port of GiilDe/ft-vs-icl scripts/metrics.py (test-only reference) ----------------------


def deutch_analyze_sim(zs_hidden, icl_hidden, ftzs_hidden, normalize=False):
    zs_hidden, icl_hidden, ftzs_hidden = (torch.tensor(h) for h in (zs_hidden, icl_hidden, ftzs_hidden))
    if normalize:
        zs_hidden = F.normalize(zs_hidden, p=2, dim=-1)
        icl_hidden = F.normalize(icl_hidden, p=2, dim=-1)
        ftzs_hidden = F.normalize(ftzs_hidden, p=2, dim=-1)
    icl_updates = icl_hidden - zs_hidden
    ftzs_updates = ftzs_hidden - zs_hidden
    cos_sim = F.cosine_similarity(icl_updates, ftzs_updates, dim=-1)
    return cos_sim.mean(dim=0).cpu().numpy()


def deutch_pad_attn_map(attn_map, max_len, pad_value):
    padded_map = torch.empty(len(attn_map), len(attn_map[0]), len(attn_map[0][0]), max_len)
    padded_map.fill_(pad_value)
    for i in range(len(attn_map)):
        padded_map[i, :, :, -len(attn_map[i][0][0]):] = torch.Tensor(attn_map[i])
    return padded_map


def deutch_analyze_attn_map(zs_attn_map, icl_attn_map, ftzs_attn_map):
    """``analyze_attn_map(..., softmax=False, diff=True)``: SimAM_Δ per layer."""
    max_zs_len = max([len(zs_attn_map[i][0][0]) for i in range(len(zs_attn_map))])
    zs_attn_map = deutch_pad_attn_map(zs_attn_map, max_zs_len, 0)
    icl_attn_map = deutch_pad_attn_map(icl_attn_map, max_zs_len, 0)
    ftzs_attn_map = deutch_pad_attn_map(ftzs_attn_map, max_zs_len, 0)
    icl_attn_map = icl_attn_map - zs_attn_map
    ft_attn_map = ftzs_attn_map - zs_attn_map
    sim = F.cosine_similarity(icl_attn_map, ft_attn_map, dim=-1)
    return sim.mean(dim=2).mean(dim=0).cpu().numpy()


# =========================================================================== the fixture

N_EX, N_LAYERS, D, N_HEADS = 9, 3, 12, 2
D_HEAD = 4  # of the recorded queries (3 heads of 4); √4 = 2 scales floats exactly
TRAIN_LENS = (25, 22, 30, 18, 27, 9)  # training examples (tokens after BOS) = demonstrations


def make_fixture(seed: int = 0) -> dict[str, np.ndarray]:
    """Random record_info-like data for ZSL / ICL / FT, and the official ports' outputs."""
    rng = np.random.default_rng(seed)
    h = {c: rng.normal(size=(N_EX, N_LAYERS, D)) for c in ("zsl", "icl", "ft")}
    h["icl"] += 0.5 * h["ft"]  # some real agreement between the updates
    q_len = rng.integers(2, 7, size=N_EX)
    s = {c: rng.normal(size=(N_EX, N_LAYERS, N_HEADS, q_len.max())) for c in ("zsl", "icl", "ft")}
    for c in s:
        for i, n in enumerate(q_len):
            s[c][i, ..., : q_len.max() - n] = 0.0  # stored left-padded; the ports get them ragged
    gold = rng.integers(0, 2, size=N_EX)
    pred = {c: np.where(rng.random(N_EX) < 0.6, gold, 1 - gold) for c in ("zsl", "icl", "ft")}
    pred["zsl"][:3], pred["ft"][:3], pred["icl"][:3] = 1 - gold[:3], gold[:3], gold[:3]
    pred["icl"][2] = 1 - gold[2]  # ICL misses one example that finetuning fixes
    ft_q = [rng.normal(size=(N_LAYERS, n + 1, D)) for n in TRAIN_LENS]  # with BOS at 0
    ftzs_q = rng.normal(size=(N_EX, N_LAYERS, D))
    ftzs_q[:3] *= 40  # saturated softmax: FT probabilities tie at exactly 0 (argsort/τ_b ties)
    icl_ctx = rng.normal(size=(N_EX, N_LAYERS, 1 + sum(n + 1 for n in TRAIN_LENS)))
    data = {f"h_{c}": v for c, v in h.items()} | {f"s_{c}": v for c, v in s.items()}
    data |= {"q_len": q_len, "gold": gold} | {f"pred_{c}": v for c, v in pred.items()}
    data |= {f"ft_q_{i}": q for i, q in enumerate(ft_q)} | {"ftzs_q": ftzs_q, "icl_ctx": icl_ctx}
    return data | official_outputs(data)


def infos(data):
    """The official scripts' ``record_info`` dicts (ZSL, ICL, FT), ragged attention maps."""
    out = []
    for c in ("zsl", "icl", "ft"):
        out.append([{
            "self_attn_out_hiddens": data[f"h_{c}"][i].tolist(),
            "attn_map": data[f"s_{c}"][i, ..., data[f"s_{c}"].shape[-1] - n:].tolist(),
            "gold_label": int(data["gold"][i]), "pred_label": int(data[f"pred_{c}"][i]),
        } for i, n in enumerate(data["q_len"])])
    return out


def ft_queries(data):
    return [data[f"ft_q_{i}"].tolist() for i in range(len(TRAIN_LENS))]


def official_outputs(data) -> dict[str, np.ndarray]:
    zs, icl, ft = infos(data)
    out = {"rec2ftp": np.array(official_count_f2t(zs, icl, ft))}
    state = np.random.get_state()
    for mode in ("all", "f2t"):  # one compute_sim.py run per mode, after np.random.seed(7)
        np.random.seed(7)
        out[f"simaou_{mode}"], out[f"simaou_random_{mode}"] = official_analyze_sim(
            zs, icl, ft, mode, "self_attn_out_hiddens", normalize=True)
        out[f"simam_zsl_{mode}"], out[f"simam_ft_{mode}"] = official_analyze_attn_map(
            zs, icl, ft, mode, "attn_map")
    np.random.set_state(state)
    script = official_training_attn_script(ft_queries(data), data["ftzs_q"].tolist(),
                                           data["icl_ctx"].tolist(), seed=11)
    return out | {training_key(k): np.array(v) for k, v in script.items()}


def training_key(key: str) -> str:
    """``'token-level random_kendall'`` → ``'token_level_random_kendall'`` (an npz name)."""
    return key.replace("-", "_").replace(" ", "_")


@pytest.fixture(scope="module")
def fixture():
    return dict(np.load(FIXTURE))


def ragged(data, c):
    return [data[f"s_{c}"][i, ..., data[f"s_{c}"].shape[-1] - n:] for i, n in enumerate(data["q_len"])]


# =========================================================================== comparisons


def test_stored_fixture_matches_the_ports(fixture):
    """The ports (and the stored numbers) have not drifted; the fixture is not degenerate."""
    now = official_outputs(fixture)
    for key, value in now.items():
        np.testing.assert_allclose(value, fixture[key], rtol=1e-12, err_msg=key)
    assert 0 < fixture["rec2ftp"] < 100 and fixture["simaou_all"].mean() > 0.1


def test_rec2ftp_matches_compute_sim(fixture):
    ok = {c: fixture[f"pred_{c}"] == fixture["gold"] for c in ("zsl", "icl", "ft")}
    assert M.rec2ftp(ok["zsl"], ok["icl"], ok["ft"]) == pytest.approx(float(fixture["rec2ftp"]), rel=1e-12)


@pytest.mark.parametrize("mode", ["all", "f2t"])
def test_simaou_and_simam_match_compute_sim(fixture, mode):
    ok = {c: fixture[f"pred_{c}"] == fixture["gold"] for c in ("zsl", "icl", "ft")}
    keep = np.ones(N_EX, bool) if mode == "all" else M.f2t_mask(ok["zsl"], ok["icl"], ok["ft"])
    assert 0 < keep.sum() <= N_EX
    h = {c: fixture[f"h_{c}"][keep] for c in ("zsl", "icl", "ft")}
    np.testing.assert_allclose(M.layer_mean(M.simaou(h["zsl"], h["icl"], h["ft"])),
                               fixture[f"simaou_{mode}"], rtol=1e-12)
    random = M.simaou_random_baseline(h["zsl"], h["icl"], 7)  # the official stream, seed 7
    np.testing.assert_allclose(M.layer_mean(random), fixture[f"simaou_random_{mode}"], rtol=1e-12)
    s = {c: [m for m, k in zip(ragged(fixture, c), keep, strict=True) if k] for c in ("zsl", "icl", "ft")}
    np.testing.assert_allclose(M.layer_mean(M.simam(s["icl"], s["zsl"])), fixture[f"simam_zsl_{mode}"], rtol=1e-12)
    np.testing.assert_allclose(M.layer_mean(M.simam(s["icl"], s["ft"])), fixture[f"simam_ft_{mode}"], rtol=1e-12)
    assert M.overall(M.simam(s["icl"], s["ft"])) == pytest.approx(fixture[f"simam_ft_{mode}"].mean())


def training_inputs(data, scaled=True):
    """Our pipeline on the official arrays: the ranked tokens of :class:`DemoLayout` (BOS and
    separators out) and :func:`finetuning_scores` of the *raw* queries (the recorder's ×2)."""
    ranked = DemoLayout(TRAIN_LENS, (1,) * len(TRAIN_LENS), ()).ranked()
    icl = data["icl_ctx"][..., 1:][..., list(ranked.positions)]  # the span after BOS
    raw = np.concatenate([data[f"ft_q_{i}"][:, 1:] for i in range(len(TRAIN_LENS))], 1) * 2
    ft = TA.finetuning_scores(data["ftzs_q"] * 2, raw, d_head=D_HEAD, scaled=scaled)
    return icl, ft, ranked.segments


@pytest.mark.parametrize("level", ["token", "example"])
def test_training_attention_matches_compute_training_example_attn(fixture, level):
    """Kendall, top-k recall and both random baselines, level by level, equal the script's
    (seeded with 11) with official conventions: scaled queries, separators out, official streams."""
    icl, ft, segments = training_inputs(fixture)
    ours = TA.training_attention(icl, ft, segments, seed=11)[level]
    names = {"kendall": "kendall", "kendall_random": "random_kendall",
             "recall": "recall_topk", "recall_random": "random_recall_topk"}
    for name, official in names.items():
        np.testing.assert_allclose(M.layer_mean(ours[name]), fixture[f"{level}_level_{official}"],
                                   rtol=1e-12, atol=1e-15, err_msg=name)
    assert 0 < fixture[f"{level}_level_recall_topk"].mean() < 1


def test_unscaled_queries_are_an_explicit_deviation(fixture):
    """Raw q·q saturates the softmax more (exact-0 ties) and moves Kendall away from the script's."""
    icl, ft_scaled, segments = training_inputs(fixture)
    _, ft_raw, _ = training_inputs(fixture, scaled=False)
    np.testing.assert_array_equal(ft_raw, ft_scaled * D_HEAD)
    tau = M.layer_mean(TA.kendall(icl, ft_raw))
    assert np.abs(tau - fixture["token_level_kendall"]).max() > 1e-3


def test_official_crash_cases_are_marked_not_applicable(fixture):
    """Too few tokens (< 100) or demonstrations (< 5): the script raises IndexError; we say why."""
    short_ctx = fixture["icl_ctx"][..., : 1 + 26 + 23 + 31]  # BOS + 3 demonstrations + separators
    with pytest.raises(IndexError):
        official_training_attn_script(ft_queries(fixture)[:3], fixture["ftzs_q"].tolist(),
                                      short_ctx.tolist(), 0)
    icl, ft, _ = training_inputs(fixture)
    n = 25 + 22 + 30
    got = TA.training_attention(icl[..., :n], ft[..., :n], TRAIN_LENS[:3], seed=0)
    assert "at least 5 demonstrations, there are 3" in got["example"]["recall"]
    assert "at least 100 demonstration tokens, there are 77" in got["token"]["recall_random"]
    assert np.isfinite(got["token"]["kendall"]).all()
    with pytest.raises(M.MetricNotApplicableError, match="top-100"):
        TA.topk_recall(icl[..., :n], ft[..., :n], 100)


def test_random_baselines_leave_the_global_streams_alone(fixture):
    icl, ft, segments = training_inputs(fixture)
    first = TA.training_attention(icl, ft, segments, seed=3)
    np.random.random(5), random.random()  # the global streams move on; ours do not follow them
    again = TA.training_attention(icl, ft, segments, seed=3)
    M.simaou_random_baseline(fixture["h_zsl"], fixture["h_icl"], 3)
    for level in first:
        for name in first[level]:
            np.testing.assert_array_equal(first[level][name], again[level][name])
    # numpy's global state is untouched (Python's is drawn by the suite's beartype checks)
    state = np.random.get_state()[1].copy()
    TA.training_attention(icl, ft, segments, seed=3)
    M.simaou_random_baseline(fixture["h_zsl"], fixture["h_icl"], 3)
    assert np.array_equal(np.random.get_state()[1], state)
    same_icl = np.repeat(icl[:1], N_EX, axis=0)
    seeded = TA.kendall_random_baseline(same_icl, 3)
    assert np.array_equal(seeded, TA.kendall_random_baseline(same_icl, 3))
    assert len(np.unique(seeded[:, 0])) > 1  # a fresh draw for every example


def test_unnormalised_simaou_and_simam_delta_match_ft_vs_icl(fixture):
    h = [fixture[f"h_{c}"] for c in ("zsl", "icl", "ft")]
    np.testing.assert_allclose(M.layer_mean(M.simaou(*h, normalize=False)),
                               deutch_analyze_sim(*h, normalize=False), rtol=1e-10)
    np.testing.assert_allclose(M.layer_mean(M.simaou(*h)), deutch_analyze_sim(*h, normalize=True), rtol=1e-10)
    s = {c: ragged(fixture, c) for c in ("zsl", "icl", "ft")}
    expected = deutch_analyze_attn_map(*([m.tolist() for m in s[c]] for c in ("zsl", "icl", "ft")))
    got = M.layer_mean(M.simam_delta(s["icl"], s["zsl"], s["ft"]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_torch_inputs_and_per_head_reductions(fixture):
    h = [torch.from_numpy(fixture[f"h_{c}"]) for c in ("zsl", "icl", "ft")]
    np.testing.assert_allclose(M.simaou(*h), M.simaou(*(x.numpy() for x in h)))
    per_head = [x.reshape(N_EX, N_LAYERS, 3, D // 3) for x in h]  # z-vectors [ex, layer, head, d]
    values = M.simaou(*per_head)
    assert values.shape == (N_EX, N_LAYERS, 3) and M.head_mean(values).shape == (N_LAYERS, 3)
    s = [fixture[f"s_{c}"] for c in ("icl", "ft")]
    assert M.simam(*s).shape == (N_EX, N_LAYERS, N_HEADS)


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **make_fixture())
    print(f"wrote {FIXTURE}")
