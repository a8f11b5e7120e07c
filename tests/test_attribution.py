"""Head attribution: first-order patching against exact ablations on a tiny model."""

import numpy as np
import torch

from dualform import load_model
from dualform.core.attribution import (
    compare_maps,
    ft_head_effects,
    icl_head_effects,
    icl_head_effects_exact,
)
from dualform.core.equations import label_margin
from dualform.core.finetune import finetune_kv, kv_parameters

PROMPT = "Word: good Sentiment: Positive\nWord: bad Sentiment: Negative\nWord: nice Sentiment:"
LABELS = [" Negative", " Positive"]


def _setup():
    model = load_model("tiny-llama", dtype=torch.float64, seed=1)
    tokens = model.to_tokens(PROMPT)
    label_ids = [model.to_tokens(w, prepend_bos=False)[0, 0].item() for w in LABELS]
    n_query = model.to_tokens("Word: nice Sentiment:", prepend_bos=False).shape[-1]
    demo = slice(1, tokens.shape[-1] - n_query)
    return model, tokens, label_ids, demo


def test_first_order_icl_effects_track_exact_ablation():
    model, tokens, label_ids, demo = _setup()
    approx = icl_head_effects(model, tokens, demo, label_ids, gold=1)
    exact = icl_head_effects_exact(model, tokens, demo, label_ids, gold=1)
    assert approx.shape == exact.shape == (model.cfg.n_layers, model.cfg.n_heads)
    corr = np.corrcoef(approx.ravel().numpy(), exact.ravel().numpy())[0, 1]
    assert corr > 0.9
    biggest = exact.abs().argmax()
    assert torch.sign(approx.ravel()[biggest]) == torch.sign(exact.ravel()[biggest])


def test_ft_effects_sum_like_a_full_revert():
    """Reverting all heads' updates to first order ≈ the margin change of the original model."""
    model, tokens, label_ids, _ = _setup()
    result = finetune_kv(model, [tokens[0]], 1e-3)
    effects = ft_head_effects(result, tokens, label_ids, gold=1)
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    total = effects[:, ::group].sum()  # each KV head once
    with torch.no_grad():
        m_ft = label_margin(result.model(tokens)[0, -1, label_ids], 1)
        m_0 = label_margin(model(tokens)[0, -1, label_ids], 1)
    assert abs(float(total) - float(m_0 - m_ft)) < 0.05 * abs(float(m_0 - m_ft)) + 1e-6
    assert all(not p.requires_grad for p in kv_parameters(result.model).values())


def test_compare_maps_rank_correlation():
    a = np.arange(12.0).reshape(3, 4)
    assert compare_maps(a, 2 * a + 1).spearman == 1.0
    assert abs(compare_maps(a, -a).kendall + 1.0) < 1e-12


def test_prefix_reuse_gives_the_same_icl_effects():
    from dualform.core.prefix import PrefixRun

    model, tokens, label_ids, demo = _setup()
    full = icl_head_effects(model, tokens, demo, label_ids, gold=1)
    run = PrefixRun(model, tokens[:, : demo.stop], hooks=("v",))
    reused = icl_head_effects(model, tokens[0, demo.stop :], demo, label_ids, gold=1, prefix=run)
    torch.testing.assert_close(reused, full, atol=1e-6, rtol=1e-5)


def test_batched_effects_equal_one_query_at_a_time():
    """Right-padded batches on one prefix: each row's ICL effects and the mean FT effects are
    those of the queries run one by one (computed in float64, returned in float32)."""
    from dualform.core.attribution import ft_head_effects_mean, icl_head_effects_batch
    from dualform.core.prefix import PrefixRun

    model, tokens, label_ids, demo = _setup()
    prefix = tokens[:, : demo.stop]
    queries = [model.to_tokens(q, prepend_bos=False)[0]
               for q in ("Word: nice Sentiment:", "Word: awful Sentiment:", "Word: ok Sentiment:")]
    golds = [1, 0, 1]
    run = PrefixRun(model, prefix, hooks=("v",))
    batched = icl_head_effects_batch(run, queries, demo, label_ids, golds)
    for row, (q, g) in enumerate(zip(queries, golds, strict=True)):
        one = icl_head_effects(model, torch.cat([prefix[0], q]), demo, label_ids, g)
        torch.testing.assert_close(batched[row], one, atol=1e-9, rtol=1e-6)
    result = finetune_kv(model, [tokens[0]], 1e-3)
    zsl = [torch.cat([tokens[0, :1], q]) for q in queries]
    mean = ft_head_effects_mean(result, zsl, label_ids, golds)
    singles = torch.stack([ft_head_effects(result, t, label_ids, g) for t, g in zip(zsl, golds, strict=True)])
    torch.testing.assert_close(mean, singles.mean(0), atol=1e-9, rtol=1e-6)
