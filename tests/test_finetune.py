"""Dai's K/V finetuning baseline: the update is exactly −lr ∂L/∂W, and nothing else moves."""

import pytest
import torch

from dualform import load_model
from dualform.core.finetune import (
    FinetuneDivergedError,
    finetune_kv,
    kv_parameters,
    next_token_loss,
    next_token_losses,
)
from dualform.errors import InvalidArgumentError
from dualform.models.features import fused_parameters

TEXTS = ["Sentence: a fine film Label: Positive", "Sentence: a dull film Label: Negative"]


def test_one_step_is_minus_lr_times_gradient(tiny64):
    lr = 0.05
    result = finetune_kv(tiny64, TEXTS[:1], lr)
    # Independent gradient with plain autograd on the untouched model.
    params = kv_parameters(tiny64)
    for p in tiny64.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    tokens = tiny64.to_tokens(TEXTS[0])
    loss = next_token_loss(tiny64(tokens), tokens, torch.ones_like(tokens, dtype=torch.bool))
    grads = torch.autograd.grad(loss, list(params.values()))
    for p in params.values():
        p.requires_grad_(False)
    for (name, _), grad in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(result.delta_w[name], -lr * grad, atol=1e-12, rtol=1e-10)
    assert any(g.abs().max() > 0 for g in grads)


def test_per_sequence_losses_equal_each_sequence_on_its_own():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, 11, (3, 6), generator=gen)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False  # right padding
    mask[2, 2:] = False
    each = next_token_losses(logits, tokens, mask)
    lengths = [int(m.sum()) for m in mask]
    alone = [next_token_loss(logits[r : r + 1, :n], tokens[r : r + 1, :n], mask[r : r + 1, :n])
             for r, n in enumerate(lengths)]
    assert each.shape == (3,)
    torch.testing.assert_close(each, torch.stack(alone), atol=1e-12, rtol=0)
    pooled = next_token_loss(logits, tokens, mask)  # one mean over every real token of the batch
    torch.testing.assert_close(pooled, (each * torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64)).sum() / 9)


def test_only_kv_change_and_caller_model_untouched(tiny64):
    before = {n: p.detach().clone() for n, p in tiny64.named_parameters()}
    result = finetune_kv(tiny64, TEXTS, 0.1)
    kv_ids = {id(p) for p in kv_parameters(result.model).values()}
    fused_ids = {id(p) for p in fused_parameters(result.model)}  # Q rows: test_architectures
    changed = 0
    for (name, p), (_, p0) in zip(result.model.named_parameters(), tiny64.named_parameters(), strict=True):
        if id(p) in fused_ids:
            continue
        if id(p) in kv_ids:
            changed += int(not torch.equal(p, p0))
        else:
            assert torch.equal(p, p0), name  # bitwise
    assert changed > 0
    for name, p in tiny64.named_parameters():
        assert torch.equal(p, before[name])
    assert len(result.losses) == 2


def test_per_head_reshape(tiny64):
    result = finetune_kv(tiny64, TEXTS, 0.1)
    ph = result.per_head("v")
    cfg = tiny64.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    assert ph.shape == (cfg.n_layers, n_kv, cfg.d_head, cfg.d_model)
    torch.testing.assert_close(ph[1, 0], result.delta_w["blocks.1.attn.v.weight"][: cfg.d_head])


def test_layer_causal_update_of_layer0_ignores_higher_layers():
    """In LCGD, layer 0's update is the same whatever the layers above it are."""
    a = load_model("tiny-llama", dtype=torch.float64, seed=0)
    b = load_model("tiny-llama", dtype=torch.float64, seed=0)
    with torch.no_grad():
        for p in b.blocks[1].parameters():
            p.add_(0.5 * torch.randn_like(p))
    ra = finetune_kv(a, TEXTS[:1], 0.1, layer_causal=True)
    rb = finetune_kv(b, TEXTS[:1], 0.1, layer_causal=True)
    name = "blocks.0.attn.k.weight"
    torch.testing.assert_close(ra.delta_w[name], rb.delta_w[name], atol=1e-12, rtol=0)
    plain_a = finetune_kv(a, TEXTS[:1], 0.1)
    plain_b = finetune_kv(b, TEXTS[:1], 0.1)
    assert not torch.allclose(plain_a.delta_w[name], plain_b.delta_w[name])


def test_batches_are_padded_and_masked():
    model = load_model("tiny-llama", dtype=torch.float64)
    result = finetune_kv(model, TEXTS, 0.1, batch_size=2)
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses)).all()


@pytest.mark.slow
def test_divergence_names_the_step(smol):
    """A far too large learning rate on the real model: the loss explodes at the 2nd step."""
    with pytest.raises(FinetuneDivergedError, match=r"step 1.*lr=100"):
        finetune_kv(smol, TEXTS * 2, 100.0)


def test_non_finite_rate_is_refused_and_an_absurd_one_diverges():
    model = load_model("tiny-llama", dtype=torch.float32)
    with pytest.raises(InvalidArgumentError, match=r"finite number > 0, got inf"):
        finetune_kv(model, TEXTS, float("inf"))
    with pytest.raises(FinetuneDivergedError, match=r"lr=1e\+30"):
        finetune_kv(model, TEXTS, 1e30)


def test_finetuned_copy_shares_all_but_kv_and_leaves_flags_alone():
    """Memory: the copy owns only W_K/W_V; the caller's parameters keep their requires_grad."""
    model = load_model("tiny-llama")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    result = finetune_kv(model, TEXTS, 0.1)
    own = {id(p) for p in kv_parameters(result.model).values()}
    base = {id(p) for p in model.parameters()}
    for p in result.model.parameters():
        assert (id(p) in own) != (id(p) in base)  # K/V are new tensors, the rest are shared
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any(p.requires_grad for p in kv_parameters(result.model).values())
