"""Every public result object has a short, informative repr (ending a notebook cell with one
shows a summary, not the model's weights or megabytes of numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualform import load_model
from dualform.core.attribution import compare_maps
from dualform.core.dual_form import dual_form, score_hooks, softmax_decomposition
from dualform.core.finetune import finetune_kv
from dualform.core.momentum_dual import momentum_dual_form
from dualform.core.prefix import PrefixRun, pad_queries
from dualform.experiments.dai.attention import attention_example
from dualform.experiments.dai.conditions import prompt_pair, record
from dualform.experiments.momentum.train import TrainLog
from dualform.experiments.vonoswald.data import sample_tasks
from dualform.experiments.vonoswald.lsa import build_lsa
from dualform.experiments.vonoswald.train import TrainConfig, TrainResult
from dualform.infra.reprs import brief
from dualform.probes import capture
from dualform.tasks.prompts import build_prompt, label_token_ids, load_task, sample_demos

LIMIT = 300


@pytest.fixture(scope="module")
def setting():
    model = load_model("tiny-llama")
    task = load_task("afinn-sentiment")
    demos = sample_demos(task, 4, seed=0)
    return model, task, demos


def _results(setting) -> dict[str, object]:
    model, task, demos = setting
    query = task.test[0]
    pair = prompt_pair(model, task, demos, query)
    tokens, n_demo = pair.icl.tokens, pair.icl.n_demo_tokens
    texts = [task.format(d, with_label=True) for d in demos]
    ft = finetune_kv(model, texts, lr=1e-3)
    layers, heads = 30, 9  # SmolLM2-sized maps: the repr must not grow with them
    icl, ft_map = (np.random.default_rng(s).normal(size=(layers, heads)) for s in (0, 1))
    run = PrefixRun(model, tokens[:, : n_demo + 1], hooks=score_hooks(model))
    return {
        "Capture": capture(model, tokens, hooks=("q", "k", "v", "z", "pattern")),
        "DualForm": dual_form(model, tokens, n_demo, demo_start=pair.icl.demo_start),
        "SoftmaxSplit": softmax_decomposition(model, tokens, n_demo, demo_start=1),
        "MomentumDualForm": momentum_dual_form(model, tokens, n_demo, eta=0.5, demo_start=1),
        "FinetuneResult": ft,
        "PrefixRun": run,
        "QueryBatch": pad_queries([tokens[0, -5:], tokens[0, -3:]], pad_id=0),
        "HeadAttribution": compare_maps(icl, ft_map),
        "Task": task,
        "Prompt": build_prompt(task, demos, query),
        "PromptTokens": pair.icl,
        "PromptPair": pair,
        "Record": record(model, tokens, label_token_ids(model, task), demo=pair.icl),
        "RegressionBatch": sample_tasks(512, 20, 10, generator=torch.Generator().manual_seed(0)),
        "TrainResult": TrainResult(build_lsa(10, 1), TrainConfig(), list(range(2000)),
                                   [1.0] * 2000, 3.5),
        "TrainLog": TrainLog([1.0] * 5000, [[[0.5] * 4] * 2] * 100, 12.0, 20.0),
        "AttentionExample": attention_example(model, task, demos, query, ft=ft),
    }


def test_every_result_repr_is_short_and_names_its_class(setting):
    results = _results(setting)
    for name, obj in results.items():
        text = repr(obj)
        assert len(text) < LIMIT, f"{name}: {len(text)} characters: {text[:400]}"
        assert text.startswith(f"{name}("), text


def test_reprs_say_what_matters(setting):
    results = _results(setting)
    model = setting[0]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert f"layers={n_layers}, heads={n_heads}, d_head={model.cfg.d_head}" in repr(results["DualForm"])
    assert "dtype=float32" in repr(results["DualForm"])
    ft = results["FinetuneResult"]
    assert f"lr=0.001, steps={len(ft.losses)}" in repr(ft) and "TransformerBridge" in repr(ft)
    assert "layers=30, heads=9" in repr(results["HeadAttribution"])
    assert "log_losses=list[2000]" in repr(results["TrainResult"])


def test_brief_summarises_values():
    assert brief(torch.zeros(30, 9, 64)) == "float32[30, 9, 64]"
    assert brief(np.zeros((2, 3), dtype=np.float64)) == "float64[2, 3]"
    assert brief(tuple(range(30))) == "0..29" and brief([1, 2]) == "[1, 2]"
    assert brief(list(range(0, 100, 2))) == "list[50]" and brief(slice(1, 288)) == "1:288"
    assert brief("x" * 100).endswith("…'") and len(brief("x" * 100)) <= 42
    assert brief(torch.nn.Linear(2, 2)) == "<Linear>"
