"""``dualform.probes`` on TransformerLens 2.x/3.x ``HookedTransformer`` models.

Skipped under TransformerLens ≥ 4 (no ``HookedTransformer`` there). ``make test-probes-compat``
(``tests/compat/run_probes_compat.sh``) runs it in small venvs with ``transformer-lens==2.*`` and
``3.*``, with ``--noconftest``: only torch, TransformerLens and ``dualform/probes.py`` are used.
On TL < 4, ``add_hook`` returns ``None``; the probes must still remove exactly their own hooks.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
import torch

TL_MAJOR = int(version("transformer-lens").split(".")[0])
if TL_MAJOR >= 4:
    pytest.skip("TransformerLens >= 4 has no HookedTransformer: `make test-probes-compat` runs "
                "this file under TL 2.x and 3.x", allow_module_level=True)

from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from dualform.probes import (  # noqa: E402
    ProbeError,
    attention_scale,
    available_short_names,
    capture,
    hooks,
)

TOKENS = torch.tensor([[0, 5, 9, 17, 3, 22, 8, 41]])
CONFIGS = {
    "rotary+gqa": dict(positional_embedding_type="rotary", n_key_value_heads=2,
                       normalization_type="RMS", act_fn="silu", gated_mlp=True),
    "learned positions": dict(positional_embedding_type="standard", normalization_type="LN",
                              act_fn="gelu"),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64,
                                  d_vocab=50, n_ctx=64, dtype=torch.float64,
                                  **CONFIGS[request.param])
    return HookedTransformer(cfg).eval()


def _no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp._forward_hooks for hp in model.hook_dict.values())


def test_every_listed_short_name_fires_and_equals_run_with_cache(model):
    names = available_short_names(model)
    assert {"q", "k", "v", "attn_scores", "pattern", "z", "resid_post"} <= set(names)
    assert ("rot_q" in names) == (model.cfg.positional_embedding_type == "rotary")
    cap = capture(model, TOKENS, hooks=names)
    _, cache = model.run_with_cache(TOKENS)
    assert len(cap) == len(names) * 2 and _no_hooks_left(model)
    for name in cap:
        torch.testing.assert_close(cap[name], cache[name], atol=0, rtol=0)
        assert name in cache


def test_scores_are_q_dot_k_times_scale(model):
    qk = ("rot_q", "rot_k") if "rot_q" in available_short_names(model) else ("q", "k")
    cap = capture(model, TOKENS, hooks=(*qk, "v", "attn_scores"))
    causal = torch.ones(TOKENS.shape[-1], TOKENS.shape[-1], dtype=torch.bool).tril()
    for layer in cap.layers:
        s = torch.einsum("bqhd,bkhd->bhqk", cap.query_vectors(layer), cap.key_vectors(layer))
        s = s * attention_scale(model, layer)
        torch.testing.assert_close(s[..., causal], cap["attn_scores", layer][..., causal],
                                   atol=1e-10, rtol=0)
        assert cap.value_vectors(layer).shape[2] == model.cfg.n_heads  # GQA expanded


def test_hooks_removed_even_when_the_forward_raises(model):
    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), hooks(model, [("blocks.0.attn.hook_v", boom)]):
        model(TOKENS)
    assert _no_hooks_left(model)
    with pytest.raises(ProbeError, match="Unknown hook"):
        capture(model, TOKENS, hooks=("v", "z", "nope"))
    assert _no_hooks_left(model)
    model(TOKENS)  # runs again without the failing hook


def test_the_callers_own_hooks_stay(model):
    seen = []
    model.add_hook("blocks.1.attn.hook_z", lambda act, hook: seen.append(hook.name))
    try:
        cap = capture(model, TOKENS, hooks="z", layers=[1])
        assert len(model.hook_dict["blocks.1.attn.hook_z"].fwd_hooks) == 1
        assert seen == ["blocks.1.attn.hook_z"] and list(cap) == ["blocks.1.attn.hook_z"]
    finally:
        model.reset_hooks()
    assert _no_hooks_left(model)


@pytest.mark.skipif(TL_MAJOR != 3, reason="TransformerBridge with add_hook returning None: TL 3.x")
def test_tl3_bridge_from_a_local_hf_model(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    words = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(64)}, unk_token="w3"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w3", bos_token="w0",
                                        eos_token="w1", pad_token="w2")
    tokenizer.save_pretrained(tmp_path)
    tokenizer.init_kwargs["name_or_path"] = str(tmp_path)  # TL 3 reloads it with a BOS
    model = TransformerBridge.boot_transformers(str(tmp_path), tokenizer=tokenizer)
    names = available_short_names(model)
    assert {"rot_q", "rot_k", "attn_scores", "z"} <= set(names)
    cap = capture(model, TOKENS, hooks=names)
    assert _no_hooks_left(model)
    _, cache = model.run_with_cache(TOKENS)
    for name in cap:
        torch.testing.assert_close(cap[name], cache[name])
