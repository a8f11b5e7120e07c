"""Drop-in momentum attention: the equation, and the hook intervention on real bridge models."""

from __future__ import annotations

import pytest
import torch

from dualform.core.momentum import decay_matrix, momentum_attention, momentum_term
from dualform.models.load import load_model
from dualform.probes import capture, hooks

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-10


def naive_momentum(values: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """``m[b, t, h] = Σ_{i<t} η_h^{t−i} v[b, i, h]`` by explicit loops; values ``[b, pos, h, d]``."""
    out = torch.zeros_like(values)
    eta = torch.as_tensor(eta, dtype=torch.float64)
    for h in range(values.shape[2]):
        for t in range(values.shape[1]):
            for i in range(t):
                out[:, t, h] += eta[h] ** (t - i) * values[:, i, h]
    return out


def expand_kv(v: torch.Tensor, n_heads: int) -> torch.Tensor:
    return v.repeat_interleave(n_heads // v.shape[2], dim=2)


def fwd_hook_count(model) -> int:
    return sum(len(point._forward_hooks) for point in set(model.hook_dict.values()))


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def model(request):
    return load_model(request.param, dtype=torch.float64)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 250, (2, 13), generator=torch.Generator().manual_seed(0))


def test_momentum_term_matches_loop_and_decay_matrix():
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(2, 3, 37, 5, dtype=torch.float64, generator=gen)  # [b, head, pos, d]
    eta = torch.tensor([0.0, 0.5, 0.95], dtype=torch.float64)
    scan = momentum_term(values, eta)
    loop = naive_momentum(values.transpose(1, 2), eta).transpose(1, 2)
    assert torch.allclose(scan, loop, atol=TOL, rtol=0)
    assert torch.allclose(decay_matrix(37, eta) @ values, loop, atol=TOL, rtol=0)
    assert scan[:, 0].abs().max() == 0  # η = 0 → no momentum at all
    assert scan[..., 0, :].abs().max() == 0  # nothing before the first position
    assert torch.allclose(momentum_term(values, 0.5), momentum_term(values, eta[1]), atol=0)


def test_momentum_term_long_sequence_is_stable():
    values = torch.ones(1, 4096, 2, dtype=torch.float64)
    m = momentum_term(values, 0.9)
    assert torch.isfinite(m).all()
    assert torch.allclose(m[0, -1], torch.full((2,), 0.9 / 0.1, dtype=torch.float64), atol=1e-9)


def test_all_layers_z_equals_vanilla_z_plus_ema(model, tokens):
    """Momentum everywhere; per layer, in the same run: z = vanilla z + Σ_{i<t} η^{t−i} v_i.

    Later layers see different inputs than in a vanilla run, so the vanilla z of each layer is
    recorded inside the momentum run by a hook registered before the momentum hooks.
    """
    eta, n_heads = 0.7, model.cfg.n_heads
    pre: dict[str, torch.Tensor] = {}

    def record(z, hook):
        pre[hook.name] = z.clone()

    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with hooks(model, [(name, record) for name in names]), momentum_attention(model, eta):
        cap = capture(model, tokens, hooks=("v", "z"))
    for layer, name in enumerate(names):
        vanilla = next(z for key, z in pre.items() if key in (name, f"blocks.{layer}.attn.o.hook_in"))
        v = expand_kv(cap.get("v", layer), n_heads)
        expected = vanilla + naive_momentum(v, torch.full((n_heads,), eta, dtype=torch.float64))
        assert (cap.get("z", layer) - expected).abs().max() < TOL
        assert (cap.get("z", layer) - vanilla).abs().max() > 1e-3  # momentum did something


@pytest.mark.parametrize("layer", [0, 1])
def test_single_layer_z_equals_vanilla_z_plus_ema(model, tokens, layer):
    """Momentum on one layer only: its hook_z is the vanilla run's hook_z plus the EMA."""
    base = capture(model, tokens, hooks=("v", "z"))
    with momentum_attention(model, 0.4, layers=[layer]):
        mom = capture(model, tokens, hooks=("v", "z"))
    n_heads = model.cfg.n_heads
    v = expand_kv(base.get("v", layer), n_heads)
    expected = base.get("z", layer) + naive_momentum(v, torch.full((n_heads,), 0.4, dtype=torch.float64))
    assert (mom.get("z", layer) - expected).abs().max() < TOL
    for earlier in range(layer):
        assert torch.equal(mom.get("z", earlier), base.get("z", earlier))


def test_eta_zero_is_vanilla(model, tokens):
    vanilla = model(tokens)
    with momentum_attention(model, 0.0):
        zero = model(tokens)
    assert torch.allclose(zero, vanilla, atol=1e-12, rtol=0)


def test_hooks_removed_on_exit_and_on_error(model, tokens):
    before = fwd_hook_count(model)
    vanilla = model(tokens)
    with momentum_attention(model, 0.5):
        assert fwd_hook_count(model) == before + 2 * model.cfg.n_layers
        changed = model(tokens)
    assert fwd_hook_count(model) == before
    assert not torch.allclose(changed, vanilla)
    with pytest.raises(RuntimeError, match="boom"), momentum_attention(model, 0.5):
        raise RuntimeError("boom")
    assert fwd_hook_count(model) == before
    assert torch.equal(model(tokens), vanilla)


def test_per_head_eta_and_head_subset(model, tokens):
    n_heads = model.cfg.n_heads
    eta = torch.linspace(0.1, 0.8, n_heads, dtype=torch.float64)
    heads = [0, n_heads - 1]
    base = capture(model, tokens, hooks=("v", "z"), layers=[0])
    with momentum_attention(model, eta, layers=[0], heads=heads) as used:
        mom = capture(model, tokens, hooks=("z",), layers=[0])
    expected_eta = torch.zeros(n_heads, dtype=torch.float64)
    expected_eta[heads] = eta[heads]
    assert torch.equal(used, expected_eta)
    v = expand_kv(base.get("v", 0), n_heads)
    expected = base.get("z", 0) + naive_momentum(v, expected_eta)
    assert (mom.get("z", 0) - expected).abs().max() < TOL
    untouched = [h for h in range(n_heads) if h not in heads]
    assert torch.equal(mom.get("z", 0)[:, :, untouched], base.get("z", 0)[:, :, untouched])


def test_padding_positions_do_not_enter_the_momentum(model, tokens):
    mask = torch.ones_like(tokens)
    mask[0, :4] = 0  # left padding in the first row
    kwargs = {"attention_mask": mask}
    base = capture(model, tokens, hooks=("v", "z"), layers=[0], **kwargs)
    with momentum_attention(model, 0.6, layers=[0], attention_mask=mask):
        mom = capture(model, tokens, hooks=("z",), layers=[0], **kwargs)
    n_heads = model.cfg.n_heads
    v = expand_kv(base.get("v", 0), n_heads) * mask[:, :, None, None]
    expected = base.get("z", 0) + naive_momentum(v, torch.full((n_heads,), 0.6, dtype=torch.float64))
    real = mask.bool()
    assert (mom.get("z", 0)[real] - expected[real]).abs().max() < TOL
    with momentum_attention(model, 0.6, layers=[0]):  # without the mask, padding leaks in
        leaky = capture(model, tokens, hooks=("z",), layers=[0], **kwargs)
    assert (leaky.get("z", 0)[real] - expected[real]).abs().max() > 1e-4


def test_bad_eta_is_rejected(model):
    with pytest.raises(ValueError, match="eta"), momentum_attention(model, 1.5):
        pass
    with pytest.raises(ValueError, match="heads"), momentum_attention(model, torch.ones(3) / 2):
        pass
