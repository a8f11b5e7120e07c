"""The LR grid in one batched run gives each rate the run finetune_kv gives it alone."""

import pytest
import torch

from dualform import load_model
from dualform.core.finetune import FinetuneDivergedError, finetune_kv, kv_parameters
from dualform.core.finetune_grid import finetune_kv_grid

TEXTS = ["Sentence: a fine film Label: Positive", "Sentence: a dull film Label: Negative",
         "Sentence: fine Label: Positive"]


def test_grid_equals_one_run_per_rate(tiny64):
    lrs = [0.1, 0.03, 0.01]
    grid = finetune_kv_grid(tiny64, TEXTS, lrs)
    for lr, got in zip(lrs, grid, strict=True):
        want = finetune_kv(tiny64, TEXTS, lr)
        assert got.lr == lr
        torch.testing.assert_close(torch.tensor(got.losses), torch.tensor(want.losses), atol=1e-12, rtol=1e-10)
        for name, delta in want.delta_w.items():
            torch.testing.assert_close(got.delta_w[name], delta, atol=1e-12, rtol=1e-10)
        tokens = tiny64.to_tokens(TEXTS[0])
        torch.testing.assert_close(got.model(tokens), want.model(tokens), atol=1e-10, rtol=1e-10)


def test_a_diverging_rate_is_reported_and_the_others_go_on():
    model = load_model("tiny-llama")
    good, bad = finetune_kv_grid(model, TEXTS, [0.01, 1e6])
    assert isinstance(bad, FinetuneDivergedError) and "lr=1000000.0" in str(bad)
    want = finetune_kv(model, TEXTS, 0.01)
    for name, delta in want.delta_w.items():
        torch.testing.assert_close(good.delta_w[name], delta, atol=1e-6, rtol=1e-5)
    assert len(good.losses) == len(TEXTS)


def test_grid_leaves_the_caller_model_alone():
    model = load_model("tiny-llama")
    before = {n: p.detach().clone() for n, p in kv_parameters(model).items()}
    finetune_kv_grid(model, TEXTS, [0.1, 0.05])
    for name, p in kv_parameters(model).items():
        assert torch.equal(p, before[name])
    assert isinstance(model.blocks[0].attn.k.original_component, torch.nn.Linear)


@pytest.mark.slow
def test_grid_on_the_embedded_model_matches_in_float32(smol):
    texts = ["Word: happy\nSentiment: Positive\n", "Word: awful\nSentiment: Negative\n"]
    lrs = [0.01, 0.001]
    for lr, got in zip(lrs, finetune_kv_grid(smol, texts, lrs), strict=True):
        want = finetune_kv(smol, texts, lr)
        torch.testing.assert_close(torch.tensor(got.losses), torch.tensor(want.losses), atol=1e-5, rtol=1e-5)
        w = want.delta_w["blocks.5.attn.v.weight"]
        rel = float((got.delta_w["blocks.5.attn.v.weight"] - w).norm() / w.norm())
        assert rel < 1e-3  # float32: ΔW is resolved only to the ulp of W (≈1e-8 here)
