"""The LR grid in one batched run gives each rate the run finetune_kv gives it alone."""

import pytest
import torch

from dualform import load_model
from dualform.core.finetune import FinetuneDivergedError, finetune_kv, kv_parameters
from dualform.core.finetune_grid import finetune_kv_grid, finetune_kv_rows, suspect_rows
from dualform.errors import InvalidArgumentError

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


def test_rows_with_their_own_texts_equal_one_run_each(tiny64):
    """Seeds × rates: each row its own (differently long) texts and rate, padded per step."""
    other = ["Sentence: an utterly dull and tedious film Label: Negative", "Sentence: good Label: Positive",
             "Sentence: the finest film of the year Label: Positive"]
    rows = [(TEXTS, 0.1), (other, 0.1), (other, 0.03)]
    for (texts, lr), got in zip(rows, finetune_kv_rows(tiny64, rows), strict=True):
        want = finetune_kv(tiny64, texts, lr)
        torch.testing.assert_close(torch.tensor(got.losses), torch.tensor(want.losses), atol=1e-12, rtol=1e-10)
        for name, delta in want.delta_w.items():
            torch.testing.assert_close(got.delta_w[name], delta, atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="same number of texts"):
        finetune_kv_rows(tiny64, [(TEXTS, 0.1), (TEXTS[:2], 0.1)])


def test_a_row_lends_its_weights_without_a_copy_and_builds_one_on_demand(tiny64):
    """A grid row's ``loaded()`` is the batch's one scratch copy holding that row's weights: the
    same logits as the row's own copy (built only when ``.model`` is read) and as finetune_kv."""
    lrs = [0.1, 0.03]
    rows = finetune_kv_grid(tiny64, TEXTS, lrs)
    tokens = tiny64.to_tokens(TEXTS[1])
    with rows[0].loaded() as m0:
        out0 = m0(tokens)
    with rows[1].loaded() as m1:
        out1 = m1(tokens)
    assert m0 is m1  # one scratch copy for the whole batch
    assert rows[0]._model is None and rows[1]._model is None  # nothing built so far
    for lr, got, out in zip(lrs, rows, (out0, out1), strict=True):
        torch.testing.assert_close(out, finetune_kv(tiny64, TEXTS, lr).model(tokens), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(got.model(tokens), out, atol=0, rtol=0)
        assert got.model is not m0 and not any(p.requires_grad for p in kv_parameters(got.model).values())


def test_two_rows_cannot_be_loaded_at_once(tiny64):
    a, b = finetune_kv_grid(tiny64, TEXTS, [0.1, 0.03])
    with a.loaded(), a.loaded():  # the same row again is fine
        with pytest.raises(RuntimeError, match="use its .model instead"):
            with b.loaded():
                pass
    with b.loaded() as m:  # once a's block is closed
        assert m is not None


def test_every_row_at_once_equals_each_row_loaded(tiny64):
    """``as_grid()``: k queries per row, rate-major, in one forward give each row's own logits
    (float64); a row cannot be loaded meanwhile, and the scratch is a plain model afterwards."""
    rows = finetune_kv_grid(tiny64, TEXTS, [0.1, 0.03, 0.01])
    trained = rows[0].row.rows
    assert trained.n_rows == 3
    queries = tiny64.to_tokens(TEXTS[:2])  # k = 2 queries (the tokenizer pads the shorter)
    with trained.as_grid() as grid:
        everything = grid(queries.repeat(3, 1))
        with pytest.raises(RuntimeError, match="computes every row at once"):
            with rows[1].loaded():
                pass
    for r, got in enumerate(rows):
        with got.loaded() as model:
            torch.testing.assert_close(everything[2 * r : 2 * r + 2], model(queries), atol=1e-10, rtol=1e-10)
    assert isinstance(trained.scratch.blocks[0].attn.k.original_component, torch.nn.Linear)
    with rows[0].loaded(), pytest.raises(RuntimeError, match="cannot compute all its rows"):
        with trained.as_grid():
            pass


def test_more_rows_than_one_batch_holds_run_as_equal_batches(tiny64):
    """Rows beyond ``max_rows`` run as several batches, each row still its own SGD run."""
    lrs = [0.1, 0.05, 0.03, 0.01, 0.005]
    rows = [(TEXTS, lr) for lr in lrs]
    whole, split = finetune_kv_rows(tiny64, rows), finetune_kv_rows(tiny64, rows, max_rows=2)
    assert len(split) == len(lrs)
    assert len({id(r._row.rows) for r in split}) == 3  # 5 rows at most 2 per batch: 2 + 2 + 1
    for a, b in zip(whole, split, strict=True):
        assert a.lr == b.lr
        for name, delta in a.delta_w.items():
            torch.testing.assert_close(b.delta_w[name], delta, atol=1e-12, rtol=1e-10)
    with pytest.raises(InvalidArgumentError, match="max_rows must be an integer >= 1"):
        finetune_kv_rows(tiny64, rows, max_rows=0)


def test_suspect_rows_screen_finds_every_non_finite_row():
    """One sum per weight flags the rows with a NaN or inf; a finite row whose sum overflows is
    flagged too (its exact check then passes), a plain finite row is not."""
    big = torch.finfo(torch.float32).max
    k, v = torch.ones(4, 3, 2), torch.ones(4, 3)
    k[1, 0, 0] = float("nan")
    v[2, 1] = float("-inf")
    k[3] = big  # finite, but its sum overflows
    assert suspect_rows([k, v]) == [1, 2, 3]
    assert suspect_rows([torch.ones(2, 5)]) == []
