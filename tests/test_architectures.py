"""The architecture matrix: 20 families, each saved with save_pretrained and loaded as a user
would, pass every identity in float64 — or the computation refuses, naming the feature.

The README's "Supported architectures" table is generated from the same checks
(``python analyses/architecture_table.py``); the last test here checks it is current.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dualform import load_model
from dualform.core.dual_form import ScoreMismatchError, dual_form, score_error, verify_scores
from dualform.core.finetune import finetune_kv
from dualform.core.relaxed import relaxed_linear_attention
from dualform.experiments.architectures import (
    CHECK_FUNCTIONS,
    FAMILIES,
    N_DEMO,
    TOLERANCE,
    cell,
    feature_columns,
    prompt_tokens,
    table_markdown,
    tiny_family_dir,
)
from dualform.models.features import UnsupportedFeatureError, attention_features

README = Path(__file__).resolve().parents[1] / "README.md"
RESULTS: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: tiny_family_dir(family, root) for family in FAMILIES}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, family_dirs, single_thread):
    model = load_model(str(family_dirs[request.param]), dtype="float64")
    RESULTS.setdefault(request.param, feature_columns(model))
    return request.param, model


@pytest.mark.parametrize("check", list(CHECK_FUNCTIONS))
def test_identity(family, check):
    name, model = family
    error = CHECK_FUNCTIONS[check](model)
    RESULTS[name][check] = cell(check, error, model)
    assert error <= TOLERANCE, f"{name}: {check} off by {error:.3g}"


def test_alibi_bias_term_is_split_and_needed(family_dirs):
    model = load_model(str(family_dirs["bloom"]), dtype="float64")
    tokens = prompt_tokens(model)
    with relaxed_linear_attention(model):
        dual = dual_form(model, tokens, N_DEMO, demo_start=1)
    assert dual.bias_demo is not None and dual.bias_query is not None
    without_bias = dual.linear_attention_output() - dual.bias_demo - dual.bias_query
    assert float((dual.z - without_bias).abs().max()) > 1e-3  # the bias term matters
    torch.testing.assert_close(dual.z, dual.linear_attention_output(), atol=1e-10, rtol=0)


def test_softcap_relaxed_uses_uncapped_scores(family_dirs):
    model = load_model(str(family_dirs["gemma2"]), dtype="float64")
    assert attention_features(model).softcap == 1.0
    with relaxed_linear_attention(model):
        dual = dual_form(model, prompt_tokens(model), N_DEMO, demo_start=1)
    torch.testing.assert_close(dual.z, dual.linear_attention_output(), atol=1e-10, rtol=0)


def test_sliding_window_shorter_than_prompt_is_refused(tmp_path):
    model = load_model(str(tiny_family_dir("mistral", tmp_path, sliding_window=8)),
                       dtype="float64")
    with pytest.raises(UnsupportedFeatureError, match="mistral.*sliding-window"):
        dual_form(model, prompt_tokens(model), N_DEMO, demo_start=1)


def test_unknown_fused_layout_is_refused(tmp_path):
    """CodeGen fuses QKV in its own mp-shard layout, which dualform does not claim to know."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from dualform.models.load import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model("codegen", vocab_size=len(tokenizer), n_embd=32, n_layer=1,
                                  n_head=4, rotary_dim=4, n_positions=256, bos_token_id=0,
                                  eos_token_id=1, pad_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), dtype="float64")
    with pytest.raises(UnsupportedFeatureError, match="codegen.*layout"):
        finetune_kv(model, ["a b c"], 0.1)


def test_score_check_catches_an_unmodelled_score_term(family_dirs):
    """A term in the scores that q·k does not explain (here a hook adding one) is refused."""
    model = load_model(str(family_dirs["llama"]), dtype="float64")
    tokens = prompt_tokens(model)
    shift = [("blocks.1.attn.hook_attn_scores", lambda s, hook: s + 1.0)]
    with model.hooks(fwd_hooks=shift), pytest.raises(ScoreMismatchError, match="layer 1"):
        verify_scores(model, tokens)
    assert score_error(model, tokens) < 1e-12


def _reproduce(path: Path, out: Path):
    from dualform.cli import app

    args = ["reproduce", "dai", "--model", str(path), "--tasks", "afinn-sentiment", "--shots", "2",
            "--n-test", "2", "--n-validation", "2", "--demo-seeds", "1", "--lr-grid", "0.01",
            "--no-untrained", "--no-report", "--out", str(out)]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_reproduce_dai_end_to_end(name, family_dirs, tmp_path, single_thread):
    result = _reproduce(family_dirs[name], tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results.json").exists()


def test_readme_table_is_current(family_dirs):
    """The README table equals the one built from the matrix: the cells the matrix tests left
    in RESULTS, and any they have not filled (pytest may order this test first) computed here."""
    for name in FAMILIES:
        missing = [c for c in CHECK_FUNCTIONS if c not in RESULTS.get(name, {})]
        if missing:
            model = load_model(str(family_dirs[name]), dtype="float64")
            RESULTS.setdefault(name, feature_columns(model))
            for check in missing:
                RESULTS[name][check] = cell(check, CHECK_FUNCTIONS[check](model), model)
    match = re.search(r"<!-- architecture-table -->\n(.*?)<!-- /architecture-table -->",
                      README.read_text(), flags=re.S)
    assert match, "README has no architecture table markers"
    assert match.group(1) == table_markdown(RESULTS), \
        "README table is stale: run python analyses/architecture_table.py"
