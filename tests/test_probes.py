import pytest
import torch
from einops import einsum

from dualform.core.dual_form import score_hooks
from dualform.probes import (
    HOOK_ALIASES,
    ProbeError,
    attention_scale,
    available_short_names,
    capture,
    hooks,
)

TEXT = "Sentence: a fine film Label: Positive"


def _causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def test_capture_records_only_what_was_asked(tiny64):
    cap = capture(tiny64, TEXT, hooks=("q", "z"), layers=[1])
    assert set(cap.activations) == {"blocks.1.attn.hook_q", "blocks.1.attn.hook_z"}
    assert cap.layers == (1,)
    assert cap.logits is not None and cap.logits.shape[-1] == tiny64.cfg.d_vocab


def test_full_hook_names_are_accepted(tiny64):
    cap = capture(tiny64, TEXT, hooks=("blocks.0.hook_resid_pre",))
    assert cap["blocks.0.hook_resid_pre"].shape[-1] == tiny64.cfg.d_model


def test_kv_come_per_kv_head_and_expanded(tiny64):
    cap = capture(tiny64, TEXT, hooks=("q", "k", "v"), layers=[0])
    n_heads, n_kv = cap.n_heads, cap.n_kv_heads
    assert cap.key_vectors(0, expand=False).shape[2] == n_kv
    expanded = cap.key_vectors(0)
    assert expanded.shape[2] == n_heads
    group = n_heads // n_kv
    for head in range(n_heads):
        assert torch.equal(expanded[:, :, head], cap.key_vectors(0, expand=False)[:, :, head // group])


def test_scores_equal_q_dot_k_times_scale(tiny64):
    """rot_q · rot_k × scale (or q · k without rotary) reproduces the captured scores."""
    names = (*score_hooks(tiny64), "scores")
    cap = capture(tiny64, TEXT, hooks=names)
    for layer in cap.layers:
        s = einsum(cap.query_vectors(layer), cap.key_vectors(layer), "b q h d, b k h d -> b h q k")
        s = s * attention_scale(tiny64, layer)
        mask = _causal(s.shape[-1])
        torch.testing.assert_close(s[..., mask], cap.get("scores", layer)[..., mask], atol=1e-10, rtol=0)


@pytest.mark.slow
def test_rotated_scores_on_the_embedded_model(smol):
    cap = capture(smol, TEXT, hooks=("rot_q", "rot_k", "q", "scores"), layers=[0, 29])
    for layer in (0, 29):
        s = einsum(cap.query_vectors(layer), cap.key_vectors(layer), "b q h d, b k h d -> b h q k")
        s = s * attention_scale(smol, layer)
        mask = _causal(s.shape[-1])
        torch.testing.assert_close(s[..., mask], cap.get("scores", layer)[..., mask], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(cap.get("q", layer), cap.query_vectors(layer))  # rotary applied


def test_unknown_hook_lists_valid_names(tiny64):
    with pytest.raises(ProbeError, match="Valid short names: q, k, v"):
        capture(tiny64, TEXT, hooks=("nope",))


def test_bad_layer_lists_range(tiny64):
    with pytest.raises(ProbeError, match=r"valid layers are 0\.\.1"):
        capture(tiny64, TEXT, hooks=("q",), layers=[7])


def test_hooks_removed_even_when_forward_raises(tiny64):
    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), hooks(tiny64, [("blocks.0.attn.hook_q", boom)]):
        tiny64(tiny64.to_tokens(TEXT))
    assert all(not hp.fwd_hooks for hp in tiny64.hook_dict.values())
    tiny64(tiny64.to_tokens(TEXT))  # runs again without the failing hook


def test_every_short_name_resolves_on_llama():
    from dualform import load_model

    model = load_model("tiny-llama")
    cap = capture(model, TEXT, hooks=tuple(HOOK_ALIASES), layers=[0])
    assert len(cap.activations) == len(HOOK_ALIASES)


def test_capture_behaves_like_an_activation_cache(tiny64):
    cap = capture(tiny64, TEXT, hooks=("q", "hook_z", "attn_scores"), layers=[0, 1])
    z0 = cap["blocks.0.attn.hook_z"]
    assert cap["z", 0] is z0 and cap["hook_z", 0] is z0 and cap.get("z", 0) is z0
    assert cap["scores", 1] is cap["attn_scores", 1] is cap["blocks.1.attn.hook_attn_scores"]
    assert "z" in cap and ("z", 1) in cap and "blocks.1.attn.hook_q" in cap
    assert "v" not in cap and ("z", 7) not in cap and 3 not in cap
    assert len(cap) == 6 and list(cap) == list(cap.keys()) == [n for n, _ in cap.items()]
    assert list(cap)[:3] == ["blocks.0.attn.hook_q", "blocks.1.attn.hook_q", "blocks.0.attn.hook_z"]
    assert all(t is cap[n] for n, t in zip(cap, cap.values(), strict=True))
    moved = cap.to("meta")
    assert all(t.device.type == "meta" for t in moved.values()) and moved.logits.device.type == "meta"
    assert cap["z", 0].device.type == "cpu"  # the original is untouched
    with pytest.raises(KeyError, match="not captured; captured: attn_scores, q, z"):
        cap["v", 0]
    with pytest.raises(KeyError, match=r"needs a layer: cap\['z', 0\]"):
        cap["z"]
    with pytest.raises(TypeError, match="key_vectors"):
        cap.keys(0)


def test_a_single_string_is_one_hook(tiny64):
    cap = capture(tiny64, TEXT, hooks="v", layers=[1])
    assert list(cap) == ["blocks.1.attn.hook_v"]
    with pytest.raises(ProbeError, match="Unknown hook 'rot_qq'"):
        capture(tiny64, TEXT, hooks="rot_qq")


def test_capture_repr_is_short_and_says_what_is_inside(tiny64):
    text = repr(capture(tiny64, TEXT, hooks=tuple(available_short_names(tiny64))))
    assert len(text) < 300, text
    assert text.startswith("Capture(hooks=[q, k, v") and "layers=[0, 1]" in text
    assert "dtype=float64" in text


def test_probes_imports_torch_and_nothing_heavier():
    """``import dualform.probes`` is standalone: torch (and jaxtyping, with its numpy, for the
    shape annotations); no TransformerLens, transformers, plotting or data libraries."""
    import subprocess
    import sys

    code = ("import sys, torch; before = set(sys.modules); import dualform.probes; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    added = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    assert {"dualform", "dualform.probes"} <= set(added)
    heavy = ("transformer_lens", "transformers", "einops", "plotly", "scipy", "pandas",
             "datasets", "typer", "rich", "beartype")
    assert not [m for m in added if m.split(".")[0] in heavy], added
