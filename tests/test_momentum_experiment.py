"""The momentum experiment's data and jobs, and the η ablation helpers."""

from __future__ import annotations

import pytest
import torch

from dualform.experiments.momentum import data as data_mod
from dualform.experiments.momentum.ablation import icl_accuracy_vs_eta, label_logits, left_pad
from dualform.experiments.momentum.data import (
    BOS,
    RecallSpec,
    make_source,
    recall_icl_prompts,
    recall_sequences,
)
from dualform.experiments.momentum.experiment import MomentumConfig, jobs_for
from dualform.models.load import load_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_recall_sequences_follow_one_dictionary_per_sequence():
    spec = RecallSpec.synthetic(5, 7)
    seqs = recall_sequences(20, 41, spec, torch.Generator().manual_seed(0))
    assert seqs.shape == (20, 41) and (seqs[:, 0] == BOS).all()
    for row in seqs:
        keys, values = row[1::2].tolist(), row[2::2].tolist()
        assert set(keys) <= set(spec.key_ids) and set(values) <= set(spec.value_ids)
        seen: dict[int, int] = {}
        for k, v in zip(keys, values, strict=False):
            assert seen.setdefault(k, v) == v  # a key always maps to the same value


def test_icl_prompts_gold_is_the_demonstrated_value():
    spec = RecallSpec.synthetic(6, 6)
    prompts, gold = recall_icl_prompts(50, 4, spec, torch.Generator().manual_seed(1))
    assert prompts.shape == (50, 10)
    for row, g in zip(prompts.tolist(), gold.tolist(), strict=True):
        demo = dict(zip(row[1:-1:2], row[2:-1:2], strict=True))
        assert len(demo) == 4 and demo[row[-1]] == g


def test_validation_and_test_windows_are_disjoint():
    source, _ = make_source("recall", 4, 4)
    val = source.eval_windows(16, 512, split="validation")
    test = source.eval_windows(16, 512, split="test")
    assert val.shape == test.shape == (32, 16)
    assert not torch.equal(val, test)


def test_text_corpus_from_file_and_offline_fallback(tmp_path, monkeypatch):
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat. " * 1000)
    source, notes = make_source(str(text), 4, 4)
    assert notes == [] and source.d_vocab == 259
    batch = source.train_batch(3, 16, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 16) and (batch[:, 0] == BOS).all()
    assert source.eval_windows(16, 160).shape[1] == 16
    monkeypatch.setattr(data_mod, "_hub_reachable", lambda timeout: False)
    fallback, notes = make_source("wikitext103", 4, 4)
    assert fallback.name == "recall" and "fell back" in notes[0]


def test_jobs_pair_every_seed():
    config = MomentumConfig(eta=0.5)
    assert len(config.seeds) >= 8  # the default protocol: at least 8 paired seeds
    fixed = jobs_for(config)
    for seed in config.seeds:
        assert {j.variant for j in fixed if j.seed == seed} >= {"vanilla", "momentum"}
    assert {j.eta for j in fixed if j.variant == "sweep"} == set(config.eta_sweep)
    tuned = jobs_for(MomentumConfig())  # η chosen later: vanilla everywhere + the sweep
    assert {j.variant for j in tuned} == {"vanilla", "sweep"}
    assert {j.seed for j in tuned if j.variant == "sweep"} == {0}


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama", dtype=torch.float64)


def test_padded_batches_match_single_prompts(llama):
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 250, (n,), generator=gen) for n in (5, 9, 7)]
    labels = [10, 20, 30]
    batched = label_logits(llama, prompts, labels, eta=0.5, batch_size=3, pad_id=2)
    single = torch.cat([label_logits(llama, [p], labels, eta=0.5) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-5)
    tokens, mask = left_pad(prompts, pad_id=2)
    assert tokens.shape == (3, 9) and mask.sum().item() == 21


def test_icl_accuracy_vs_eta(llama):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 250, (6,), generator=gen) for _ in range(6)]
    labels = [40, 50, 60]
    gold = label_logits(llama, prompts, labels).argmax(-1).tolist()
    acc = icl_accuracy_vs_eta(llama, prompts, labels, gold, (0.0, 0.9), progress=False)
    assert acc[0.0] == 1.0
    assert 0.0 <= acc[0.9] <= 1.0
