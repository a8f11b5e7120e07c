"""The trainable TransformerLens-native momentum LM: hooks, twins, η, save/load, training."""

from __future__ import annotations

import pytest
import torch

from dualform.core.dual_form import dual_form
from dualform.core.momentum import momentum_attention
from dualform.core.relaxed import relaxed_linear_attention
from dualform.experiments.momentum.data import RecallSpec, recall_sequences
from dualform.experiments.momentum.model import MomentumLM, MomentumLMConfig
from dualform.experiments.momentum.train import lm_loss, train_lm
from dualform.probes import available_short_names, capture

pytestmark = pytest.mark.usefixtures("single_thread")


def make(positional: str = "rotary", **kw) -> MomentumLM:
    cfg = MomentumLMConfig(
        d_vocab=40, n_ctx=32, d_model=32, n_layers=2, n_heads=4, n_key_value_heads=2,
        positional=positional, **kw,
    )
    return MomentumLM(cfg).double()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 40, (2, 17), generator=torch.Generator().manual_seed(0))


def test_tl_hook_names_and_capture(tokens):
    model = make(eta=0.5)
    names = set(available_short_names(model))
    assert {"q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z"} <= names
    assert {"attn_out", "resid_pre", "resid_mid", "resid_post"} <= names
    assert "blocks.1.attn.hook_momentum" in model.hook_dict
    cap = capture(model, tokens, hooks=("q", "k", "v", "pattern", "z", "resid_post"))
    assert cap.get("q", 1).shape == (2, 17, 4, 8)
    assert cap.get("k", 1).shape == (2, 17, 2, 8)  # per KV head (GQA)
    assert cap.get("pattern", 0).shape == (2, 4, 17, 17)
    assert torch.allclose(cap.get("pattern", 0).sum(-1), torch.ones(2, 4, 17, dtype=torch.float64))
    assert cap.get("resid_post", 1).shape == (2, 17, 32)


@pytest.mark.parametrize("positional", ["rotary", "learned"])
def test_native_momentum_equals_dropin_on_vanilla_twin(tokens, positional):
    """Same seed → same weights; native momentum == vanilla twin + drop-in hooks."""
    native = make(positional, eta=0.6)
    twin = make(positional, eta=0.0)
    assert not twin.cfg.use_momentum
    eta = native.etas()
    assert torch.allclose(eta, torch.full_like(eta, 0.6), atol=1e-6)
    with momentum_attention(twin, eta[0]):  # the exact η = sigmoid(logit) of the native model
        hooked = twin(tokens)
    assert torch.allclose(native(tokens), hooked, atol=1e-12, rtol=0)
    assert not torch.allclose(native(tokens), twin(tokens), atol=1e-4)


def test_fused_and_materialised_attention_agree(tokens):
    model = make(eta=0.3)
    fused = model(tokens)
    cap = capture(model, tokens, hooks=("pattern",))  # a pattern hook forces materialisation
    assert torch.allclose(cap.logits, fused, atol=1e-12, rtol=0)


def test_momentum_off_is_the_vanilla_twin(tokens):
    off = make(eta=0.5, momentum=False)
    zero = make(eta=0.0)
    assert torch.equal(off(tokens), zero(tokens))
    assert torch.equal(off.etas(), torch.zeros(2, 4, dtype=torch.float64))


def test_learnable_eta_gets_gradients_and_stays_in_unit_interval(tokens):
    model = make(eta=0.5, learn_eta=True)
    lm_loss(model, tokens).backward()
    grads = [block.attn.eta_logit.grad for block in model.blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # absurd steps on the logits alone (steps this size on every weight overflow to NaN):
    # whatever the logit, η must stay in [0, 1]
    opt = torch.optim.SGD([block.attn.eta_logit for block in model.blocks], lr=1e4)
    for _ in range(3):
        opt.zero_grad()
        lm_loss(model, tokens).backward()
        opt.step()
    etas = model.etas()
    assert ((etas >= 0) & (etas <= 1)).all()
    assert not torch.allclose(etas, torch.full_like(etas, 0.5))


def test_save_load_roundtrip(tmp_path, tokens):
    model = make(eta=0.4, learn_eta=True)
    with torch.no_grad():
        model.blocks[0].attn.eta_logit.add_(torch.arange(4.0, dtype=torch.float64))
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MomentumLM.load(tmp_path / "m").double()
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded(tokens), model(tokens))
    assert torch.equal(loaded.etas(), model.etas())


def test_dual_form_is_exact_on_the_vanilla_twin(tokens):
    model = make(eta=0.0)
    with relaxed_linear_attention(model):
        dual = dual_form(model, tokens[:1], n_demo_tokens=10, demo_start=1)
    assert dual.delta_w_icl.shape == (2, 4, 8, 8)
    assert (dual.linear_attention_output() - dual.z).abs().max() < 1e-10


def test_padding_mask_gives_finite_outputs(tokens):
    model = make(eta=0.5)
    mask = torch.ones_like(tokens)
    mask[0, :5] = 0
    logits = model(tokens, attention_mask=mask)
    assert torch.isfinite(logits).all()
    right = tokens.clone()
    right[:, -3:] = 2
    right_mask = torch.ones_like(tokens)
    right_mask[:, -3:] = 0  # right padding never changes the real positions (causal)
    assert torch.allclose(
        model(right, attention_mask=right_mask)[:, :-3], model(tokens)[:, :-3], atol=1e-12
    )


def test_tiny_training_run_lowers_the_loss():
    spec = RecallSpec.synthetic(4, 4)
    cfg = MomentumLMConfig(d_vocab=spec.d_vocab, n_ctx=32, d_model=32, n_heads=2, eta=0.5)
    model = MomentumLM(cfg)
    gen = torch.Generator().manual_seed(0)
    fixed = recall_sequences(16, 32, spec, gen)
    before = float(lm_loss(model, fixed).detach())
    log = train_lm(model, lambda step: fixed, steps=40, lr=1e-2, warmup=5, progress=False)
    assert len(log.losses) == 40
    assert float(lm_loss(model, fixed).detach()) < before - 0.5
