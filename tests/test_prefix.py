"""Demonstration-prefix reuse + batching gives the same records as one full forward per query
(to 1e-5 of each quantity's magnitude in float32)."""

import pytest
import torch

from dualform import load_model, load_task, sample_demos
from dualform.core.dual_form import score_hooks
from dualform.core.prefix import PrefixRun
from dualform.experiments.dai.conditions import prompt_pair, record, record_batch
from dualform.tasks.prompts import label_token_ids


def _check(model, n_shots: int, atol: float, rtol: float) -> None:
    task = load_task("afinn-sentiment")
    demos = sample_demos(task, n_shots, seed=1)
    labels = label_token_ids(model, task)
    pairs = [prompt_pair(model, task, demos, ex) for ex in task.test[:3]]
    icl = pairs[0].icl
    prefix = icl.tokens[:, : icl.n_prefix]
    run = PrefixRun(model, prefix, hooks=score_hooks(model))
    queries = [p.icl.tokens[0, prefix.shape[-1]:] for p in pairs]
    batched = record_batch(run, queries, labels, demo=icl)
    for pair, got in zip(pairs, batched, strict=True):
        want = record(model, pair.icl.tokens, labels, demo=pair.icl)
        for name in ("label_logits", "attn_out", "z", "scores", "q", "icl_update",
                     "norm_delta_w_icl", "norm_w_zsl"):
            a, b = getattr(got, name), getattr(want, name)
            assert a.shape == b.shape, name
            finite = torch.isfinite(b) & (b > -1e30)  # masked score entries hold the dtype minimum
            scale = b[finite].abs().max().clamp_min(1.0)  # float32: compare relative to magnitude
            torch.testing.assert_close(a[finite] / scale, b[finite] / scale, atol=atol, rtol=rtol, msg=name)


def test_prefix_reuse_equals_full_forward_tiny():
    _check(load_model("tiny-llama"), 4, atol=1e-5, rtol=1e-5)


def test_prefix_reuse_equals_full_forward_gpt2_learned_positions():
    _check(load_model("tiny-gpt2"), 4, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_prefix_reuse_equals_full_forward_embedded(smol):
    _check(smol, 8, atol=1e-5, rtol=1e-5)


def test_pad_tokens_pads_either_side_and_masks_real_tokens():
    from dualform.core.prefix import pad_queries, pad_tokens

    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    tokens, mask = pad_tokens(seqs, pad_id=0)
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    tokens, mask = pad_tokens(seqs, pad_id=2, side="left")
    assert tokens.tolist() == [[5, 6, 7], [2, 2, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pad_queries(seqs, pad_id=0).last.tolist() == [2, 0]
    with pytest.raises(ValueError, match="side"):
        pad_tokens(seqs, 0, side="middle")


@pytest.mark.parametrize("hooked", [True, False])
def test_logits_at_unembeds_only_the_given_positions(monkeypatch, hooked):
    from dualform.core import prefix as prefix_module
    from dualform.core.prefix import logits_at

    model = load_model("tiny-llama")
    tokens = torch.randint(3, 200, (3, 7))
    positions = torch.tensor([6, 2, 4])
    with torch.no_grad():
        full = model(tokens)
        if not hooked:  # a bridge without unembed.hook_in: gathered from the full logits
            monkeypatch.setattr(prefix_module, "UNEMBED_IN", "no.such.hook")
        with logits_at(model, positions) as pick:
            raw = model(tokens)
            got = pick(raw)
    assert raw.shape[1] == (1 if hooked else 7)  # hooked: the model itself unembedded 1 position
    assert got.shape == (3, 1, full.shape[-1])
    torch.testing.assert_close(got[:, 0], full[torch.arange(3), positions], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the hook is gone after the block
        assert model(tokens).shape == full.shape
