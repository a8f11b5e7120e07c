import pytest
import torch

from dualform import load_model
from dualform.models import ModelLoadError
from dualform.models.load import byte_tokenizer, clone_model, embedded_model_dir


def test_unknown_model_names_the_alternatives():
    with pytest.raises(ModelLoadError, match="smollm2-135m.*tiny-llama"):
        load_model("no-such-model")


def test_tiny_models_are_seeded_and_configured():
    a, b = load_model("tiny-llama", seed=3), load_model("tiny-llama", seed=3)
    tokens = a.to_tokens("same seed")
    assert torch.equal(a(tokens), b(tokens))
    assert a.cfg.positional_embedding_type == "rotary"
    assert a.cfg.n_key_value_heads < a.cfg.n_heads  # grouped-query attention
    assert load_model("tiny-gpt2").cfg.positional_embedding_type == "standard"


def test_byte_tokenizer_round_trips_text():
    tok = byte_tokenizer()
    ids = tok("Héllo, world!")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == "Héllo, world!"


def test_clone_model_after_a_grad_forward():
    model = load_model("tiny-gpt2")
    tokens = model.to_tokens("abc")
    model(tokens)  # leaves non-leaf tensors on some bridge components
    copy = clone_model(model)
    assert torch.allclose(copy(tokens), model(tokens))
    next(copy.parameters()).data.add_(1.0)
    assert not torch.allclose(copy(tokens), model(tokens))


def test_untrained_copy_has_same_shape_but_other_weights(smol):
    rand = load_model("smollm2-135m", untrained=True)
    assert rand.cfg.n_layers == smol.cfg.n_layers
    w0 = smol.blocks[0].attn.k.original_component.weight
    w1 = rand.blocks[0].attn.k.original_component.weight
    assert w0.shape == w1.shape and not torch.allclose(w0, w1)


@pytest.mark.slow
def test_embedded_model_loads_offline_and_knows_paris(smol, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (embedded_model_dir() / "model.safetensors").exists()
    tokens = smol.to_tokens("The capital of France is")
    top = smol(tokens)[0, -1].argmax()
    assert smol.to_string(top).strip() == "Paris"
    assert (smol.cfg.n_layers, smol.cfg.n_heads, smol.cfg.n_key_value_heads) == (30, 9, 3)
