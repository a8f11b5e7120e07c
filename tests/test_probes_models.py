"""Probes on every kind of TransformerLens 4 model: bridges built anywhere, boot_native, MomentumLM.

Every short name that :func:`available_short_names` lists fires; hooks that exist but do not
fire, or fire with the pattern in place of the scores, are refused; no hook is ever left behind.
"""

from __future__ import annotations

import pytest
import torch

from dualform.core.dual_form import dual_form, score_hooks
from dualform.probes import ProbeError, available_short_names, capture, hook_name, hooks

TOKENS = torch.tensor([[0, 5, 9, 17, 3, 22, 8]])


def _native(positional: str):
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources import boot_native  # noqa: F401 (attaches boot_native)

    cfg = dict(d_model=32, d_head=8, n_layers=2, n_ctx=64, n_heads=4, n_key_value_heads=2,
               d_vocab=50, d_mlp=64, positional_embedding_type=positional, act_fn="silu",
               normalization_type="RMS", gated_mlp=True, seed=0)
    return TransformerBridge.boot_native(cfg)


def _momentum():
    from dualform.experiments.momentum.model import MomentumLM, MomentumLMConfig

    cfg = MomentumLMConfig(d_vocab=50, n_ctx=32, d_model=32, n_layers=2, n_heads=4,
                           n_key_value_heads=2, eta=0.5)
    return MomentumLM(cfg)


def _boot_transformers(tmp_path_factory):
    from transformer_lens.model_bridge import TransformerBridge

    from dualform.models.load import byte_tokenizer, tiny_hf_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_hf_model("tiny-llama").save_pretrained(folder)
    return TransformerBridge.boot_transformers(str(folder), tokenizer=byte_tokenizer())


def _tiny(name: str):
    from dualform import load_model

    return load_model(name)


MODELS = {
    "tiny-llama (build_bridge_from_module)": lambda f: _tiny("tiny-llama"),
    "tiny-gpt2 (build_bridge_from_module)": lambda f: _tiny("tiny-gpt2"),
    "tiny-llama (boot_transformers)": _boot_transformers,
    "boot_native rotary": lambda f: _native("rotary"),
    "boot_native standard": lambda f: _native("standard"),
    "MomentumLM": lambda f: _momentum(),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request, tmp_path_factory):
    return MODELS[request.param](tmp_path_factory)


def _no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp._forward_hooks for hp in model.hook_dict.values())


def test_every_listed_short_name_fires(model):
    names = available_short_names(model)
    assert {"q", "k", "v", "z", "pattern"} <= set(names)
    cap = capture(model, TOKENS, hooks=names)
    assert len(cap) == len(names) * model.cfg.n_layers
    assert all(cap[s, layer].shape[0] == 1 for s in names for layer in (0, 1))
    assert _no_hooks_left(model)


def test_scores_are_listed_only_when_they_precede_the_softmax(model):
    if "attn_scores" not in available_short_names(model):
        pytest.skip("this model gives no pre-softmax scores")
    cap = capture(model, TOKENS, hooks=("attn_scores", "pattern"), layers=[1])
    scores, pattern = cap["attn_scores", 1], cap["pattern", 1]
    torch.testing.assert_close(torch.softmax(scores, dim=-1), pattern)


def test_dual_form_runs_or_refuses_clearly(model):
    """A rotary model that hides rot_q/rot_k is refused (unrotated q·k would be wrong)."""
    hidden = "rot_q" not in available_short_names(model) and hook_name("rot_q", 0) in model.hook_dict
    if hidden:
        with pytest.raises(ProbeError, match="does not expose its rotated queries"):
            dual_form(model, TOKENS, 3)
    else:
        dual = dual_form(model, TOKENS, 3)
        assert dual.q.shape[:2] == (model.cfg.n_layers, model.cfg.n_heads)
        assert set(score_hooks(model)) <= set(available_short_names(model))
    assert _no_hooks_left(model)


def test_boot_native_refuses_hooks_that_never_fire():
    model = _native("rotary")
    assert hook_name("rot_q", 0) in model.hook_dict  # the hook point exists ...
    assert "rot_q" not in available_short_names(model)  # ... but is not listed
    with pytest.raises(ProbeError, match="never fired them"):
        capture(model, TOKENS, hooks="rot_q")
    assert _no_hooks_left(model)
    with pytest.raises(ProbeError, match="fired after the softmax"):
        capture(model, TOKENS, hooks=("attn_scores",), layers=[0])
    assert _no_hooks_left(model)


def test_capture_equals_run_with_cache_and_keeps_the_callers_hooks():
    model = _tiny("tiny-llama")
    _, cache = model.run_with_cache(TOKENS)
    seen = []
    with hooks(model, [("blocks.0.attn.hook_z", lambda act, hook: seen.append(act.shape))]):
        cap = capture(model, TOKENS, hooks=("z", "rot_k", "attn_scores"))
        assert len(model.hook_dict["blocks.0.attn.hook_z"].fwd_hooks) == 1  # the caller's one
    assert len(seen) == 1 and _no_hooks_left(model)
    for name in cap:
        torch.testing.assert_close(cap[name], cache[name])


def test_the_firing_probe_ignores_and_keeps_the_callers_interventions():
    """available_short_names' 2-token forward runs without the caller's hooks, which stay on."""
    from dualform.core.relaxed import relaxed_linear_attention

    model = _tiny("tiny-llama")
    key_mask = torch.ones(TOKENS.shape[-1], dtype=torch.bool)  # would not broadcast to 2 tokens
    with relaxed_linear_attention(model, key_mask=key_mask):
        assert "rot_q" in available_short_names(model)
        relaxed = dual_form(model, TOKENS, 3)
    torch.testing.assert_close(relaxed.z, relaxed.linear_attention_output(), rtol=1e-4, atol=1e-4)
    assert _no_hooks_left(model)
