"""Each shim of dualform.models.compat: what it fixes, its version guard, and that a model it
patched is left as it was."""

from __future__ import annotations

import json

import pytest
import torch
from transformer_lens.model_bridge.sources import build_bridge_from_module

from dualform import load_model
from dualform.core.prefix import PrefixRun, pad_queries
from dualform.models import compat
from dualform.models.load import byte_tokenizer, clone_model, tiny_hf_model
from dualform.probes import ProbeError, attention_scale, capture


def bare_bridge(family: str, tmp_path):
    """A bridge built directly by TransformerLens (no dualform shims), as a user might."""
    from transformers import AutoModelForCausalLM

    from dualform.experiments.architectures import tiny_family_dir

    path = tiny_family_dir(family, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    bridge = build_bridge_from_module(hf, hf.config.architectures[0], hf_config=hf.config,
                                      tokenizer=byte_tokenizer(), model_name=family)
    return bridge.eval()


def test_version_guard_names_the_versions(monkeypatch):
    monkeypatch.setitem(compat.TESTED, "transformers", ((9, 0), (10, 0)))
    with pytest.raises(compat.CompatError, match=r"transformers 9\.0 to below 10\.0; installed: 5\."):
        compat.require_tested("KV-cache", "transformers")
    compat.require_tested("KV-cache", "transformer-lens")  # the installed one is tested


def test_kv_cache_shim_is_undone_and_prefix_runs_match_full_forward():
    model = load_model("tiny-llama", dtype=torch.float64)
    tokens = model.to_tokens("demonstrations then a query")
    with compat.kv_cache(model):
        assert all("_update_kv_cache" in vars(b.attn) for b in model.blocks)
        with compat.kv_cache(model):  # re-entrant
            pass
        assert all("_update_kv_cache" in vars(b.attn) for b in model.blocks)
    assert not any("_update_kv_cache" in vars(b.attn) for b in model.blocks)
    run = PrefixRun(model, tokens[:, :6], hooks=("v",))
    cap = run.run(pad_queries([tokens[0, 6:]], 0), ("z",))
    assert not any("_update_kv_cache" in vars(b.attn) for b in model.blocks)
    full = capture(model, tokens, hooks=("z",))
    torch.testing.assert_close(cap.get("z", 1)[0], full.get("z", 1)[0, 6:], atol=1e-12, rtol=0)


@pytest.mark.parametrize("family", ["gpt_neox", "opt"])
def test_attention_hooks_fire_inside_and_are_undone(family, tmp_path):
    model = bare_bridge(family, tmp_path)
    tokens = model.to_tokens("a b c d e f")
    implementation = model.original_model.config._attn_implementation
    with pytest.raises(ProbeError, match="never fired"):
        capture(model, tokens, hooks=("attn_scores",) if family == "opt" else ("rot_q",))
    reference = model(tokens)
    with compat.attention_hooks(model):
        q, k = ("rot_q", "rot_k") if family == "gpt_neox" else ("q", "k")
        cap = capture(model, tokens, hooks=(q, k, "attn_scores"), layers=[1])
        torch.testing.assert_close(model(tokens), reference, atol=1e-12, rtol=0)
    expected = torch.einsum("bqhd,bkhd->bhqk", cap.query_vectors(1), cap.key_vectors(1)) * attention_scale(model, 1)
    causal = torch.ones(tokens.shape[-1], tokens.shape[-1], dtype=torch.bool).tril()
    torch.testing.assert_close(cap.get("attn_scores", 1)[..., causal], expected[..., causal],
                               atol=1e-12, rtol=0)
    assert model.original_model.config._attn_implementation == implementation
    assert not any({"_apply_rotary_pos_emb", "_masked_softmax"} & set(vars(b.attn))
                   for b in model.blocks)


def test_float64_softmax_stays_float64():
    model = load_model("tiny-llama", dtype=torch.float64)  # load_model keeps the shims on
    tokens = model.to_tokens("precision of the pattern")
    cap = capture(model, tokens, hooks=("attn_scores", "pattern"), layers=[0])
    exact = torch.softmax(cap.get("attn_scores", 0), dim=-1)
    torch.testing.assert_close(cap.get("pattern", 0), exact, atol=1e-15, rtol=0)


def test_copy_of_a_patched_model_calls_its_own_components(tmp_path):
    from dualform.experiments.architectures import tiny_family_dir

    model = load_model(str(tiny_family_dir("gpt_neox", tmp_path)), dtype="float64")
    copy = clone_model(model)
    for original, copied in zip(model.blocks, copy.blocks, strict=True):
        assert vars(copied.attn)["_apply_rotary_pos_emb"].__self__ is copied.attn
        assert vars(original.attn)["_apply_rotary_pos_emb"].__self__ is original.attn
    tokens = model.to_tokens("copy")
    assert capture(copy, tokens, hooks=("rot_q",)).get("rot_q", 0).shape[1] == tokens.shape[-1]


def test_copy_after_a_forward_fires_its_own_block_hooks(tmp_path):
    """Granite's scaled hook_attn_out is a forward hook a block wires on its first forward."""
    from dualform.experiments.architectures import tiny_family_dir

    model = load_model(str(tiny_family_dir("granite", tmp_path)), dtype="float64")
    tokens = model.to_tokens("copy")
    model(tokens)  # wires the blocks' hooks
    copy = clone_model(model)
    assert capture(copy, tokens, hooks=("attn_out",)).get("attn_out", 0).shape[1] == tokens.shape[-1]
    assert capture(model, tokens, hooks=("attn_out",)).get("attn_out", 0).shape[1] == tokens.shape[-1]


def test_padding_nan_fix_zeroes_fully_masked_rows():
    model = load_model("tiny-llama")
    tokens = torch.tensor([[2, 2, 40, 41, 42], [40, 41, 42, 43, 44]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with compat.finite_padding_patterns(model, mask):
        logits = model(tokens, attention_mask=mask)
    assert bool(torch.isfinite(logits[:, -1]).all())
    assert isinstance(compat.finite_padding_patterns(model, torch.ones_like(mask)),
                      type(compat.nullcontext()))


def test_drop_quantization_config_lets_the_weights_be_saved(tmp_path):
    model = tiny_hf_model("tiny-llama")
    model.config.quantization_config = {"quant_method": "gguf"}
    compat.drop_quantization_config(model)
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())


def test_a_nested_attention_hooks_keeps_the_firing_probe_answer(monkeypatch, tmp_path):
    """load_model keeps the shims on, so PrefixRun's attention_hooks changes nothing: the cached
    answer of available_short_names must survive it (else one probe forward per query batch);
    on a bare bridge, where the shims change which hooks fire, it is dropped and probed again."""
    from dualform import probes

    model = load_model("tiny-llama", dtype=torch.float64)
    first = probes.available_short_names(model)
    probed = []
    real = probes._firing_short_names
    monkeypatch.setattr(probes, "_firing_short_names", lambda m: probed.append(m) or real(m))
    with compat.attention_hooks(model):
        assert probes.available_short_names(model) == first
    run = PrefixRun(model, model.to_tokens("a prefix"), hooks=("v",))
    run.run(pad_queries([torch.tensor([5, 6])], 0), ("z",))
    assert probes.available_short_names(model) == first and probed == []
    bare = bare_bridge("gpt_neox", tmp_path)
    before = probes.available_short_names(bare)
    with compat.attention_hooks(bare):
        inside = probes.available_short_names(bare)
    assert "rot_q" in inside and "rot_q" not in before and probed == [bare, bare]
