"""The architecture matrix: dualform's identities on tiny random models of 20 families.

Each family is a small Hugging Face config with its distinguishing attention features switched
on (grouped-query attention, partial rotary, parallel attention, QKV bias, soft-capping, ALiBi,
scaled attention). :func:`tiny_family_dir` saves a random model of it with ``save_pretrained``
(the path a real checkpoint takes through :func:`dualform.load_model`), and :func:`check_model`
measures every identity in float64: probes, the dual form against the model's own scores, the
relaxed identity, the exact softmax split, the momentum identity and one K/V finetuning step
against a hand-written SGD step. ``tests/test_architectures.py`` asserts them and
``analyses/architecture_table.py`` turns them into the README table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dualform.core.dual_form import dual_form, score_error, softmax_decomposition
from dualform.core.finetune import finetune_kv, kv_parameters, next_token_loss
from dualform.core.momentum_dual import momentum_dual_form
from dualform.core.relaxed import relaxed_linear_attention
from dualform.infra.rng import seeded
from dualform.models.features import (
    attention_features,
    fused_layout,
    fused_parameters,
    fused_qkv_name,
    fused_rows,
    fused_weights,
)
from dualform.models.load import byte_tokenizer
from dualform.probes import available_short_names, capture, head_counts

_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64, "max_position_embeddings": 512}
_GQA = {**_SMALL, "num_key_value_heads": 2}
#: family (Hugging Face ``model_type``) → config with its distinguishing features on.
FAMILIES: dict[str, dict] = {
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "gpt_neox": {**_SMALL, "rotary_pct": 0.25, "use_parallel_residual": True},
    "gptj": {"n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4, "n_positions": 512},
    "opt": {**_SMALL, "ffn_dim": 64, "word_embed_proj_dim": 32},
    "llama": _GQA,
    "mistral": {**_GQA, "sliding_window": 256},
    "qwen2": _GQA,
    "qwen3": {**_GQA, "head_dim": 8},
    "gemma": {**_GQA, "head_dim": 8},
    "gemma2": {**_GQA, "head_dim": 8, "attn_logit_softcapping": 1.0,
               "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 16,
               "sliding_window": 256},
    "gemma3_text": {**_GQA, "head_dim": 8, "query_pre_attn_scalar": 16, "sliding_window": 256},
    "phi": {**_SMALL, "partial_rotary_factor": 0.5},
    "phi3": {**_GQA, "partial_rotary_factor": 0.5},
    "olmo2": _GQA,
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 4},
    "falcon": {**_SMALL, "new_decoder_architecture": False, "multi_query": True,
               "parallel_attn": True, "alibi": False, "bias": True},
    "stablelm": {**_GQA, "partial_rotary_factor": 0.25, "use_qkv_bias": True},
    "gpt_bigcode": {"n_embd": 32, "n_layer": 2, "n_head": 4, "multi_query": True,
                    "n_positions": 512},
    "granite": {**_GQA, "attention_multiplier": 0.3, "embedding_multiplier": 2.0,
                "residual_multiplier": 0.5, "logits_scaling": 4.0},
    "cohere": _GQA,
}
CHECKS = ("probes", "dual form", "relaxed", "softmax split", "momentum", "K/V finetuning")
TOLERANCE = 1e-10
PROMPT = "Review: good film. Sentiment: Positive\nReview: dull plot. Sentiment:"
N_DEMO = 35  # the first demonstration's tokens (after BOS) with the byte tokenizer


def tiny_family_dir(family: str, root: Path, *, seed: int = 0, **overrides) -> Path:
    """A random ``family`` model saved with ``save_pretrained`` (+ the byte tokenizer) under
    ``root/family``; load it with ``load_model(path, dtype="float64")``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=0,
                                  eos_token_id=1, pad_token_id=2,
                                  **{**FAMILIES[family], **overrides})
    with seeded(seed):  # transformers draws from the global RNG
        model = AutoModelForCausalLM.from_config(config)
    path = Path(root) / family
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompt_tokens(model) -> Tensor:
    return model.to_tokens(PROMPT)


def check_probes(model) -> float:
    """0 when every attention hook the model declares is captured with a consistent shape."""
    wanted = [h for h in ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z")
              if h in available_short_names(model)]
    tokens = prompt_tokens(model)
    cap = capture(model, tokens, hooks=wanted)
    n_heads, n_kv = head_counts(model)
    for layer in cap.layers:
        assert cap.query_vectors(layer).shape[2] == cap.key_vectors(layer).shape[2] == n_heads
        assert cap.key_vectors(layer, expand=False).shape[2] == n_kv
        assert cap.get("pattern", layer).shape[-1] == tokens.shape[-1]
    return 0.0


def check_dual_form(model) -> float:
    """``max |scores − scale·(rot_q·rot_k + b)|``: the dual form's vectors are the model's."""
    tokens = prompt_tokens(model)
    dual_form(model, tokens, N_DEMO, demo_start=1)
    return score_error(model, tokens)


def check_relaxed(model) -> float:
    """``max |hook_z − (W_ZSL + ΔW_ICL) q − Σ b_i v_i|`` under relaxed linear attention."""
    with relaxed_linear_attention(model):
        dual = dual_form(model, prompt_tokens(model), N_DEMO, demo_start=1)
    return float((dual.z - dual.linear_attention_output()).abs().max())


def check_softmax_split(model) -> float:
    split = softmax_decomposition(model, prompt_tokens(model), N_DEMO, demo_start=1)
    return float((split.z - split.recombined()).abs().max())


def check_momentum(model) -> float:
    mom = momentum_dual_form(model, prompt_tokens(model), N_DEMO, 0.5, demo_start=1)
    return float((mom.dual.z - mom.output()).abs().max())


def check_finetune(model, lr: float = 0.01) -> float:
    """One ``finetune_kv`` step against ``W − lr·∇W`` written by hand on the K/V projections;
    every other parameter bit for bit unchanged, a fused QKV weight's query rows included."""
    tokens = prompt_tokens(model)
    result = finetune_kv(model, [tokens[0]], lr)
    params = kv_parameters(model)
    with torch.enable_grad():
        for p in params.values():
            p.requires_grad_(True)
        try:
            loss = next_token_loss(model(tokens), tokens, torch.ones_like(tokens, dtype=torch.bool))
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        finally:
            for p in params.values():
                p.requires_grad_(False)
    tuned = kv_parameters(result.model)
    error = max(float((tuned[n] - (p - lr * grads[n])).abs().max()) for n, p in params.items())
    skip = {id(p) for p in (*tuned.values(), *fused_parameters(result.model))}
    for (name, p), p0 in zip(result.model.named_parameters(), model.parameters(), strict=True):
        if id(p) not in skip and not torch.equal(p, p0):
            raise AssertionError(f"finetune_kv changed {name}, not a K/V weight")
    return max(error, fused_error(model, result.model, grads, lr))


def fused_error(model, tuned, grads: dict[str, Tensor], lr: float) -> float:
    """Fused QKV: query rows bit for bit unchanged (else ``inf``); K/V rows vs the SGD step."""
    if fused_qkv_name(model) is None:
        return 0.0
    n_heads, n_kv = head_counts(model)
    rows = fused_rows(fused_layout(model), n_heads, n_kv, int(model.cfg.d_head))
    error = 0.0
    for (layer, part, w0, axis), (*_, w1, _) in zip(fused_weights(model), fused_weights(tuned),
                                                   strict=True):
        if not torch.equal(w0.index_select(axis, rows["q"]), w1.index_select(axis, rows["q"])):
            return float("inf")
        for proj in ("k", "v"):
            g = grads[f"blocks.{layer}.attn.{proj}.{part}"]
            step = w0.index_select(axis, rows[proj]) - lr * (g.T if axis == 1 else g)
            error = max(error, float((w1.index_select(axis, rows[proj]) - step).abs().max().detach()))
    return error


CHECK_FUNCTIONS: dict[str, Callable] = dict(zip(CHECKS, (
    check_probes, check_dual_form, check_relaxed, check_softmax_split, check_momentum,
    check_finetune), strict=True))


def feature_columns(model) -> dict[str, str]:
    """The family's attention features as table cells."""
    f = attention_features(model)
    return {
        "heads (KV)": f"{f.n_heads} ({f.n_kv_heads})",
        "rotary": "–" if f.rotary_fraction is None else f"{f.rotary_fraction:g}",
        "other": ", ".join(x for x in (
            "ALiBi" if f.alibi else "", f"soft-cap {f.softcap:g}" if f.softcap else "",
            f"sliding window {f.sliding_window}" if f.sliding_window else "",
            f"fused QKV ({f.fused_layout})" if f.fused_qkv else "") if x) or "–",
    }


def cell(check: str, error: float | str, model) -> str:
    """✓ (with what the check used, where it matters) or ✗ and the error."""
    if isinstance(error, str):
        return f"✗ {error}"
    if not error <= TOLERANCE:
        return f"✗ {error:.1e}"
    f = attention_features(model)
    notes = {
        "dual form": "+ ALiBi bias term" if f.alibi else "",
        "relaxed": "uncapped q·k" if f.softcap else ("+ ALiBi bias" if f.alibi else ""),
        "softmax split": "capped scores" if f.softcap else "",
        "K/V finetuning": "K/V rows of fused QKV" if f.fused_qkv else "",
    }
    note = notes.get(check, "")
    return f"✓ ({note})" if note else "✓"


def table_markdown(rows: dict[str, dict[str, str]]) -> str:
    """The README table: one row per family, feature columns then one column per check."""
    columns = list(next(iter(rows.values())))
    lines = ["| family | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += [f"| {family} | " + " | ".join(row[c] for c in columns) + " |"
              for family, row in rows.items()]
    return "\n".join(lines) + "\n"
