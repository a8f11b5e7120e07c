"""Devices and precision: --dtype for forward passes, float32 master weights for half-precision
finetuning, device_map="auto" for models larger than one device, automatic batch sizes."""

from __future__ import annotations

import pytest
import torch

from dualform import finetune_kv, load_model, load_task, sample_demos
from dualform.core.finetune import kv_parameters
from dualform.core.prefix import CPU_BATCH_CAP, auto_batch_size
from dualform.experiments.dai.conditions import prompt_pair, record_all
from dualform.models.load import ModelLoadError, byte_tokenizer, resolve_dtype, tiny_hf_model
from dualform.tasks.prompts import label_token_ids


def test_dtype_names():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(None) is torch.float32
    with pytest.raises(ModelLoadError, match="float32, float64, bfloat16, float16"):
        resolve_dtype("int8")


def test_bfloat16_forward_is_close_to_float32():
    tokens = torch.tensor([[0, 40, 50, 60, 70, 80]])
    ref = load_model("tiny-llama")(tokens)
    half = load_model("tiny-llama", dtype="bfloat16")
    assert next(half.parameters()).dtype is torch.bfloat16
    out = half(tokens)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_half_precision_finetuning_keeps_float32_master_weights():
    """With lr·g below bfloat16's resolution a plain bfloat16 SGD step would lose most updates;
    the float32 master copy keeps every one and the model holds its rounding."""
    model = load_model("tiny-llama", dtype="bfloat16")
    texts = ["a happy day", "a sad day"]
    ft = finetune_kv(model, texts, lr=1e-4)
    name = "blocks.0.attn.v.weight"
    delta = ft.delta_w[name]
    assert delta.dtype is torch.float32
    assert (delta != 0).float().mean() > 0.9
    before, after = kv_parameters(model)[name], kv_parameters(ft.model)[name]
    # the model holds the master weights rounded to bfloat16 (8 bits of mantissa)
    torch.testing.assert_close(after.float(), before.float() + delta, atol=1e-6, rtol=2**-8)


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory):
    """tiny-llama saved as a local Hugging Face model directory."""
    path = tmp_path_factory.mktemp("hf-tiny")
    tiny_hf_model("tiny-llama").save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def test_device_map_auto_loads_a_local_model_and_gives_the_same_logits(local_dir, monkeypatch):
    """On this CPU-only machine accelerate places everything on the CPU; what is checked is that
    the map reaches Hugging Face's loader (which does the placement) and the model still works."""
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(*args, **kwargs)

    tokens = torch.tensor([[0, 40, 50, 60]])
    plain = load_model(str(local_dir))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    mapped = load_model(str(local_dir), device_map="auto")
    assert seen == ["auto"]
    torch.testing.assert_close(mapped(tokens), plain(tokens))
    half = load_model(str(local_dir), dtype="float16", device_map="auto")
    assert next(half.parameters()).dtype is torch.float16  # loaded in that dtype directly


def test_device_map_is_refused_for_tiny_models():
    with pytest.raises(ModelLoadError, match="device_map"):
        load_model("tiny-llama", device_map="auto")


def test_auto_batch_size_follows_free_memory():
    model = load_model("tiny-llama")
    plenty = auto_batch_size(model, n_keys=300, n_query=12, free_bytes=10**12)
    assert plenty == CPU_BATCH_CAP
    assert auto_batch_size(model, n_keys=300, n_query=12, free_bytes=10**3) == 1
    mid = [auto_batch_size(model, n_keys=300, n_query=12, free_bytes=b, cap=10**6)
           for b in (10**7, 10**8, 10**9)]
    assert mid == sorted(mid) and mid[0] < mid[-1]
    with_grad = auto_batch_size(model, n_keys=300, n_query=12, free_bytes=10**8, cap=10**6,
                                backward=True)
    assert with_grad < mid[1]  # attribution keeps the head-expanded keys/values for backward


def test_auto_batch_gives_the_numbers_of_a_fixed_batch():
    model = load_model("tiny-llama")
    task = load_task("afinn-sentiment")
    demos = sample_demos(task, 4, seed=1)
    labels = label_token_ids(model, task)
    prompts = [prompt_pair(model, task, demos, ex).icl for ex in task.test[:5]]
    auto = record_all(model, prompts, labels, dual=True)
    fixed = record_all(model, prompts, labels, dual=True, batch_size=2)
    for a, b in zip(auto, fixed, strict=True):
        torch.testing.assert_close(a.label_logits, b.label_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.icl_update, b.icl_update, atol=1e-5, rtol=1e-5)
