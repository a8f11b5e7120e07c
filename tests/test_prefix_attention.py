"""The shared-prefix attention (``dualform.models.compat.prefix_attention``) against the bridge's
own attention on a per-row copy of the cache: every hook, the logits and the gradients agree
in float64 to 1e-12, the cache is never written, and the model is restored afterwards."""

import pytest
import torch

from dualform import load_model
from dualform.core.prefix import PrefixRun, pad_queries
from dualform.experiments.architectures import FAMILIES, prompt_tokens, tiny_family_dir
from dualform.models.compat import _patch
from dualform.models.compat.prefix_attention import (
    grouped_scores,
    grouped_values,
    model_applies,
    shared_prefix_applies,
    shared_prefix_attention,
)
from dualform.probes import hook_name

HOOKS = ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "attn_out", "resid_post")


@pytest.fixture(scope="module")
def llama64():
    return load_model("tiny-llama", dtype=torch.float64)  # rotary, 2 query heads per key head


def _pair(model, prefix_len: int = 9):
    torch.manual_seed(0)
    vocab = min(200, model.cfg.d_vocab)
    prefix = torch.randint(3, vocab, (1, prefix_len))
    queries = pad_queries([torch.randint(3, vocab, (n,)) for n in (4, 1, 3)], pad_id=0)
    shared, copied = PrefixRun(model, prefix), PrefixRun(model, prefix)
    copied.shared = False  # the bridge's own attention on a copied cache
    return shared, copied, queries


def _assert_same_as_the_bridge(model) -> None:
    shared, copied, queries = _pair(model)
    assert shared.shared and model_applies(model)
    hooks = [h for h in HOOKS if hook_name(h, 0) in model.hook_dict]
    got = shared.run(queries, hooks, last_logits=True)
    want = copied.run(queries, hooks, last_logits=True)
    assert set(got.keys()) == set(want.keys()) and len(got) == len(hooks) * model.cfg.n_layers
    for name in want.keys():
        assert got[name].shape == want[name].shape, name
        finite = torch.isfinite(want[name])  # masked score entries: -inf or the dtype minimum
        torch.testing.assert_close(got[name][finite], want[name][finite], atol=1e-12, rtol=1e-12,
                                   msg=name)
        assert torch.equal(finite, torch.isfinite(got[name])), name
    torch.testing.assert_close(got.logits, want.logits, atol=1e-12, rtol=1e-12)
    assert shared.cache.get_seq_length() == shared.length  # never written


def test_the_shared_path_fires_every_hook_as_the_bridge_does(llama64):
    _assert_same_as_the_bridge(llama64)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: tiny_family_dir(family, root) for family in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_on_the_shared_path_matches_the_bridge(family, family_dirs, single_thread):
    """Each architecture of the matrix that takes the shared path (partial rotary, biases, GQA
    or not …) gives the bridge's numbers; the others keep the bridge's own path."""
    model = load_model(str(family_dirs[family]), dtype="float64")
    if not model_applies(model):
        assert not PrefixRun(model, prompt_tokens(model)[:, :4]).shared  # the bridge's own path
        return
    _assert_same_as_the_bridge(model)


def test_the_shared_path_has_the_bridges_gradients(llama64):
    shared, copied, queries = _pair(llama64)
    grads = []
    for run in (shared, copied):
        with torch.enable_grad():
            llama64.zero_grad(set_to_none=True)
            weight = llama64.blocks[0].attn.q.original_component.weight
            weight.requires_grad_(True)
            cap = run.run(queries, ("z",), detach=False, last_logits=True)
            cap.logits.square().sum().backward()
            grads.append(weight.grad.clone())
            weight.requires_grad_(False)
            weight.grad = None
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-12)


def test_grouped_scores_and_values_equal_the_expanded_matmuls():
    torch.manual_seed(1)
    b, kv, g, n, p, d = 3, 2, 3, 4, 5, 6
    q = torch.randn(b, kv * g, n, d, dtype=torch.float64)
    k, v = (torch.randn(b, kv, n, d, dtype=torch.float64) for _ in range(2))
    pk, pv = (torch.randn(1, kv, p, d, dtype=torch.float64) for _ in range(2))
    keys = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2).repeat_interleave(g, dim=1)
    values = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2).repeat_interleave(g, dim=1)
    scores = grouped_scores(q, k, pk, 0.5)
    torch.testing.assert_close(scores, q @ keys.transpose(2, 3) * 0.5, atol=1e-12, rtol=1e-12)
    pattern = scores.softmax(-1)
    torch.testing.assert_close(grouped_values(pattern, v, pv), pattern @ values, atol=1e-12,
                               rtol=1e-12)


def test_the_model_is_restored_and_the_hugging_face_module_untouched(llama64):
    attns = [block.attn for block in llama64.blocks]
    hf_forward = [vars(a.original_component).get("forward") for a in attns]
    with shared_prefix_attention(llama64):
        assert all("forward" in vars(a) for a in attns)
        assert [vars(a.original_component).get("forward") for a in attns] == hf_forward
    assert not any("forward" in vars(a) for a in attns)


def test_patch_binds_a_public_name_on_the_bridge_itself(llama64):
    """A bridge's ``__setattr__`` forwards ``forward`` to the wrapped module: the patch must not."""
    attn = llama64.blocks[0].attn
    undo = _patch(llama64, "forward", lambda self, *a, **k: None, lambda a: a is attn)
    assert "forward" in vars(attn) and "forward" not in vars(attn.original_component)
    undo()
    assert "forward" not in vars(attn)


def test_other_attentions_take_the_bridges_own_path(llama64):
    attn = llama64.blocks[0].attn
    assert shared_prefix_applies(attn)
    attn.train()
    try:
        assert not shared_prefix_applies(attn)  # dropout: the bridge's own path
    finally:
        attn.eval()
    gpt2 = load_model("tiny-gpt2")  # learned positions, its own attention bridge
    assert not model_applies(gpt2)
    assert not PrefixRun(gpt2, torch.tensor([[1, 5, 6]])).shared
    before = attn.config.use_attn_result
    attn.config.use_attn_result = True  # per-head results: the bridge's own path
    try:
        assert not shared_prefix_applies(attn)
    finally:
        attn.config.use_attn_result = before


def test_a_model_put_in_training_mode_takes_the_bridges_path(llama64):
    """Dropout in training mode is not the shared path's: a run made in eval mode then copies the
    cache per batch, with the same numbers (dropout 0 in this model)."""
    shared, copied, queries = _pair(llama64)
    want = copied.run(queries, ("z",), last_logits=True)
    llama64.train()
    try:
        got = shared.run(queries, ("z",), last_logits=True)
    finally:
        llama64.eval()
    torch.testing.assert_close(got.logits, want.logits, atol=1e-12, rtol=1e-12)
    assert shared.cache.get_seq_length() == shared.length


def test_the_shim_refuses_untested_library_versions(llama64, monkeypatch):
    from dualform.models import compat

    monkeypatch.setitem(compat.TESTED, "transformer-lens", ((9, 0), (10, 0)))
    with pytest.raises(compat.CompatError, match="shared-prefix attention.*transformer-lens 9.0"):
        with shared_prefix_attention(llama64):
            pass
    assert not any("forward" in vars(block.attn) for block in llama64.blocks)
