"""The dual-form identities on real hooked models (float64)."""

import pytest
import torch

from dualform import dual_form, relaxed_linear_attention, softmax_decomposition
from dualform.core.dual_form import demo_mask
from dualform.probes import capture

PROMPT = "Sentence: great fun Label: Positive\nSentence: dull Label: Negative\nSentence: lovely Label:"
N_QUERY = 12


def _n_demo(model) -> int:
    return model.to_tokens(PROMPT).shape[-1] - N_QUERY


def test_shapes(tiny64):
    dual = dual_form(tiny64, PROMPT, _n_demo(tiny64))
    n_layers, n_heads, d_head = tiny64.cfg.n_layers, tiny64.cfg.n_heads, tiny64.cfg.d_head
    assert dual.delta_w_icl.shape == (n_layers, n_heads, d_head, d_head)
    assert dual.w_zsl.shape == dual.delta_w_icl.shape
    assert dual.q.shape == (n_layers, n_heads, d_head)


def test_relaxed_attention_output_is_the_dual_form(tiny64):
    """With relaxed linear attention, hook_z at the last position = (W_ZSL + ΔW_ICL) q."""
    n_demo = _n_demo(tiny64)
    with relaxed_linear_attention(tiny64):
        dual = dual_form(tiny64, PROMPT, n_demo)
    torch.testing.assert_close(dual.z, dual.linear_attention_output(), atol=1e-10, rtol=0)
    assert dual.icl_update().abs().max() > 1e-3  # the demonstrations contribute


def test_only_demo_columns_give_the_icl_update(tiny64):
    tokens = tiny64.to_tokens(PROMPT)
    n_demo = _n_demo(tiny64)
    with relaxed_linear_attention(tiny64, key_mask=demo_mask(tokens.shape[-1], n_demo)):
        dual = dual_form(tiny64, tokens, n_demo)
    torch.testing.assert_close(dual.z, dual.icl_update(), atol=1e-10, rtol=0)


def test_demo_start_moves_bos_to_the_query_side(tiny64):
    tokens = tiny64.to_tokens(PROMPT)
    n_demo = _n_demo(tiny64)
    a = dual_form(tiny64, tokens, n_demo)
    b = dual_form(tiny64, tokens, n_demo - 1, demo_start=1)
    torch.testing.assert_close(a.delta_w_icl + a.w_zsl, b.delta_w_icl + b.w_zsl, atol=1e-10, rtol=0)
    assert not torch.allclose(a.w_zsl, b.w_zsl)


def test_gqa_heads_share_their_kv_head_update():
    from dualform import load_model

    model = load_model("tiny-llama", dtype=torch.float64)
    dual = dual_form(model, PROMPT, _n_demo(model))
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    torch.testing.assert_close(dual.delta_w_icl[:, 0], dual.delta_w_icl[:, group - 1])
    assert not torch.allclose(dual.delta_w_icl[:, 0], dual.delta_w_icl[:, group])


def test_hooks_are_removed_after_relaxing(tiny64):
    tokens = tiny64.to_tokens(PROMPT)
    before = tiny64(tokens)
    with relaxed_linear_attention(tiny64):
        relaxed = tiny64(tokens)
    torch.testing.assert_close(tiny64(tokens), before)
    assert not torch.allclose(relaxed, before)


def test_softmax_decomposition_is_exact(tiny64):
    """z = λ z_demo + (1−λ) z_query holds to 1e-10 against softmax(scores) V in float64."""
    tokens = tiny64.to_tokens(PROMPT)
    n_demo = _n_demo(tiny64)
    split = softmax_decomposition(tiny64, tokens, n_demo)
    cap = capture(tiny64, tokens, hooks=("attn_scores", "v"))
    for i, layer in enumerate(split.layers):
        scores = cap.get("attn_scores", layer)[0, :, -1].double()
        values = cap.value_vectors(layer)[0].transpose(0, 1)
        z_ref = torch.einsum("hk,hkd->hd", torch.softmax(scores, -1), values)
        torch.testing.assert_close(split.recombined()[i], z_ref, atol=1e-10, rtol=0)
    # The bridge computes the softmax in float32, so the model's own z agrees to float32 precision.
    torch.testing.assert_close(split.recombined(), split.z, atol=1e-6, rtol=1e-6)
    assert ((split.lam > 0) & (split.lam < 1)).all()


def test_too_many_demo_tokens_is_an_error(tiny64):
    n = tiny64.to_tokens(PROMPT).shape[-1]
    with pytest.raises(ValueError, match="at least one query token"):
        dual_form(tiny64, PROMPT, n)


@pytest.mark.slow
def test_identities_on_the_embedded_model_float64(smol64):
    tokens = smol64.to_tokens(PROMPT)
    n_demo = _n_demo(smol64)
    with relaxed_linear_attention(smol64):
        dual = dual_form(smol64, tokens, n_demo, demo_start=1)
    scale = dual.z.abs().max()
    torch.testing.assert_close(dual.z / scale, dual.linear_attention_output() / scale, atol=1e-10, rtol=0)
    mask = demo_mask(tokens.shape[-1], n_demo, 1)
    with relaxed_linear_attention(smol64, key_mask=mask):
        dual = dual_form(smol64, tokens, n_demo, demo_start=1)
    scale = dual.z.abs().max()
    torch.testing.assert_close(dual.z / scale, dual.icl_update() / scale, atol=1e-10, rtol=0)
