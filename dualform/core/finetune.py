"""Explicit finetuning baseline of Dai et al.: SGD on the key and value projections only.

Protocol (reference §1): plain SGD, batch size 1, one epoch over the *same* demonstrations in
demonstration order, loss = mean next-token cross-entropy over all tokens of each formatted
demonstration; only ``W_K`` and ``W_V`` (weights and biases) of every attention layer move.
``ΔW_FT = W_after − W_before`` per layer and KV head.

``layer_causal=True`` is the layer-causal variant of Deutch et al. (2024, code
``GiilDe/ft-vs-icl``, option ``per_layer``): the residual stream is detached at the input of
every block and the loss is the sum over layers of the logit-lens loss read at each block's
output (final norm + unembedding). Layer ℓ's update then depends only on layers ≤ ℓ — like ICL,
where a layer's "meta-gradient" is built from the lower layers' already-updated states.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from dualform.core.equations import delta_w_ft
from dualform.core.prefix import pad_tokens
from dualform.errors import (
    DualformError,
    InvalidArgumentError,
    check_count,
    check_learning_rate,
    check_not_empty,
)
from dualform.models.features import fused_parameters, sync_fused_kv
from dualform.models.load import clone_model, resolve_device
from dualform.probes import check_context, head_counts, hook_name, hooks, n_layers


class FinetuneDivergedError(DualformError, RuntimeError):
    """The finetuning loss became NaN/inf or exploded, or the update outgrew the weights; the
    message names the step (or parameter) and lr."""


def kv_parameters(model) -> dict[str, torch.nn.Parameter]:
    """``{"blocks.{l}.attn.{k|v}.{weight|bias}": parameter}`` for every attention layer."""
    params: dict[str, torch.nn.Parameter] = {}
    for layer in range(n_layers(model)):
        attn = model.blocks[layer].attn
        for proj in ("k", "v"):
            linear = getattr(attn, proj).original_component
            for part, p in linear.named_parameters(recurse=False):
                params[f"blocks.{layer}.attn.{proj}.{part}"] = p
    return params


class FinetuneResult:
    """The finetuned copy, ``ΔW = W_after − W_before`` per K/V parameter, and the losses.

    ``model`` shares every frozen weight with the model it was trained from. A row of a batched
    run (:func:`dualform.core.finetune_grid.finetune_kv_rows`) builds its copy and its ΔW on
    first use only; :meth:`loaded` lends its weights without building a copy.
    """

    def __init__(self, model, delta_w: dict[str, Tensor] | None, losses: list[float], lr: float,
                 layer_causal: bool = False, n_kv_heads: int = 1, *, row=None) -> None:
        self._model, self._delta_w, self._row = model, delta_w, row
        self.losses, self.lr = losses, lr
        self.layer_causal, self.n_kv_heads = layer_causal, n_kv_heads

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = self._row.build()
        return self._model

    @property
    def row(self):
        """Its row of a batched run (:class:`dualform.core.finetune_grid.Row`), or ``None``."""
        return self._row

    @property
    def delta_w(self) -> dict[str, Tensor]:
        if self._delta_w is None:
            self._delta_w = self._row.delta()
        return self._delta_w

    @contextmanager
    def loaded(self) -> Iterator[torch.nn.Module]:
        """The finetuned model for the duration of the block: :attr:`model` once built, else the
        row's weights loaded into its batch's scratch copy (no new copy; valid in the block)."""
        if self._model is not None or self._row is None:
            yield self.model
        else:
            with self._row.loaded() as model:
                yield model

    def __repr__(self) -> str:
        losses = (f"loss {self.losses[0]:.4g} → {self.losses[-1]:.4g}" if self.losses
                  else "no steps")
        kind = type(self._model if self._row is None else self._row.base).__name__
        n_weights = len(self._delta_w if self._row is None else self._row.names)
        return (f"FinetuneResult(model=<{kind}>, lr={self.lr:g}, "
                f"steps={len(self.losses)}, {losses}, ΔW of {n_weights} K/V weights"
                f"{', layer-causal' if self.layer_causal else ''})")

    def per_head(self, proj: str = "k") -> Float[Tensor, "layer kv_head d_head d_model"]:
        """ΔW of ``W_K`` (``proj="k"``) or ``W_V`` reshaped per layer and KV head."""
        layers = sorted({int(n.split(".")[1]) for n in self.delta_w})
        stacked = torch.stack([self.delta_w[f"blocks.{x}.attn.{proj}.weight"] for x in layers])
        return rearrange(
            stacked, "layer (kv_head d_head) d_model -> layer kv_head d_head d_model",
            kv_head=self.n_kv_heads,
        )


def finetune_kv(
    model,
    texts: Sequence[str] | Sequence[Tensor],
    lr: float,
    *,
    epochs: int = 1,
    batch_size: int = 1,
    seed: int = 0,
    shuffle: bool = False,
    device: str | torch.device | None = None,
    layer_causal: bool = False,
    explode_factor: float = 4.0,
    max_update_ratio: float = 1.0,
    progress: bool = False,
) -> FinetuneResult:
    """Dai's explicit finetuning: SGD on W_K/W_V only; the caller's model is not modified.

    With a fused QKV projection only its K and V rows move; its query rows stay bit for bit.

    The returned ``.model`` shares every parameter except W_K/W_V with ``model`` (unless
    ``device`` moves it elsewhere): finetuning many rates costs one K/V set each, not a model.
    Treat both as read-only, or ``clone_model`` the result before changing other weights.

    ``texts`` are strings (tokenised with the model's tokenizer, BOS prepended) or token
    tensors (each at least 2 tokens and at most the context window: nothing is truncated).
    Raises :class:`FinetuneDivergedError` when a loss or gradient is NaN/inf, a loss exceeds
    ``explode_factor`` × the first loss, or ``‖ΔW‖ > max_update_ratio · ‖W‖`` for a K/V
    projection (the update no longer adjusts the weights, it replaces them). For a bfloat16/float16 model the update is kept in
    float32 master copies of W_K/W_V (the half-precision weights are rounded from them).
    """
    check_finetune_args(texts, lr, epochs=epochs, batch_size=batch_size)
    tuned = copy_for_finetuning(model, device)
    tuned.eval()  # no dropout: the update must be a deterministic function of the data
    params = kv_parameters(tuned)
    for p in params.values():
        p.requires_grad_(True)
    master = master_weights(params)
    before = {name: m.clone() for name, m in master.items()}
    batches = training_batches(tuned, texts, batch_size)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    steps = [
        b for _ in range(epochs)
        for b in _order(batches, shuffle, generator)
    ]
    for step, (tokens, mask) in enumerate(tqdm(steps, desc="finetune W_K/W_V", disable=not progress)):
        loss = _loss(tuned, tokens, mask, layer_causal)
        check_loss(loss, losses, step, lr, explode_factor)
        grads = torch.autograd.grad(loss, list(params.values()))
        check_finite_grads(grads, params, step, lr)
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads, strict=True):
                sgd_step(p, master[name], g, lr)
        losses.append(loss.item())
    for p in params.values():
        p.requires_grad_(False)
    delta = {name: delta_w_ft(master[name], before[name]) for name in params}
    sync_fused_kv(tuned)
    check_update(delta, before, lr, max_update_ratio)
    _, n_kv = head_counts(tuned)
    return FinetuneResult(tuned, delta, losses, lr, layer_causal, n_kv)


def check_finetune_args(texts, lr: float, *, epochs: int = 1, batch_size: int = 1) -> None:
    """The argument checks of :func:`finetune_kv` (and the grid): a positive finite rate,
    counts >= 1, at least one text."""
    check_learning_rate(lr)
    check_count(epochs, "epochs")
    check_count(batch_size, "batch_size")
    check_not_empty(texts, "texts (the finetuning data)")


def check_update(delta: dict[str, Tensor], before: dict[str, Tensor], lr: float,
                 max_ratio: float) -> None:
    """Raise :class:`FinetuneDivergedError` if ``‖ΔW‖ / ‖W‖ > max_ratio`` for a K/V projection
    (weight and bias together, so a zero-initialised bias does not count as infinite growth)."""
    groups: dict[str, list[str]] = {}
    for name in delta:
        groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    for proj, names in groups.items():
        change = math.sqrt(sum(float(delta[n].double().square().sum()) for n in names))
        size = math.sqrt(sum(float(before[n].double().square().sum()) for n in names))
        if not math.isfinite(change) or change > max_ratio * max(size, 1e-12):
            raise FinetuneDivergedError(
                f"Finetuning diverged: the update of {proj} has norm {change:.4g}, more than "
                f"{max_ratio:g}× the weights' norm {size:.4g} (lr={lr}). Use a smaller lr."
            )


def copy_for_finetuning(model, device):
    """The model to train: on the model's own device it shares every parameter but W_K/W_V with
    ``model`` (memory of one K/V set, not of a model); on another device, a full copy there.
    Gradients are only ever asked for W_K/W_V, so the shared parameters are never written.
    A fused QKV weight (GPT-2, GPT-NeoX, Phi-3, Falcon, …) is copied too: the bridge computes
    with split q/k/v copies of it, and :func:`sync_fused_kv` writes the trained K/V rows back."""
    sync_fused_kv(model, check=True)  # refuse an unknown fused layout before any training
    if device is not None:
        here, target = next(model.parameters()).device, resolve_device(device)
        if target.type != here.type or target.index not in (None, here.index):
            return clone_model(model).to(target)
    kv = {id(p) for p in (*kv_parameters(model).values(), *fused_parameters(model))}
    frozen = [t for t in (*model.parameters(), *model.buffers()) if id(t) not in kv]
    return clone_model(model, share=frozen)


def master_weights(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights SGD updates: the parameters themselves in float32/float64, float32 master
    copies for bfloat16/float16 (a step of size lr·g is often below their resolution)."""
    return {name: p.detach() if _master_dtype(p.dtype) == p.dtype
            else p.detach().to(_master_dtype(p.dtype)).clone() for name, p in params.items()}


def sgd_step(param: Tensor, master: Tensor, grad: Tensor, lr: float | Tensor) -> None:
    """``W ← W − lr·g`` on the master weights, then the parameter holds them (rounded). The
    same arithmetic for a float ``lr`` and a per-rate tensor, so a batched grid and single
    runs round alike. ``grad`` is consumed: ``lr·g`` is formed in its memory (no new buffer of
    the weights' size per step)."""
    step = grad.to(master.dtype)
    master.sub_(step.mul_(lr))
    if master.data_ptr() != param.data_ptr():
        param.copy_(master)


def _master_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def train_only_kv(model) -> dict[str, torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params = kv_parameters(model)
    for p in params.values():
        p.requires_grad_(True)
    return params


def training_batches(model, texts, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Right-padded token batches with a mask of real tokens."""
    seqs = [model.to_tokens(t, truncate=False)[0] if isinstance(t, str) else t.reshape(-1)
            for t in texts]
    for i, s in enumerate(seqs):
        if len(s) < 2:
            raise InvalidArgumentError(
                f"Finetuning text {i} has {len(s)} token(s); a next-token loss needs at least 2 "
                "(is the text empty?).")
        check_context(model, len(s), f"Finetuning text {i}")
    pad = (model.tokenizer.pad_token_id if model.tokenizer is not None else 0) or 0
    device = next(model.parameters()).device
    return [tuple(t.to(device) for t in pad_tokens(seqs[i : i + batch_size], pad))
            for i in range(0, len(seqs), batch_size)]


def _order(batches: list, shuffle: bool, generator: torch.Generator) -> list:
    if not shuffle:
        return batches
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def next_token_loss(
    logits: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    mask: torch.Tensor,
) -> Float[Tensor, ""]:
    """Mean cross-entropy of predicting token t+1 from position t over real (unpadded) tokens."""
    per_token, weights = _token_losses(logits, tokens, mask)
    return (per_token * weights).sum() / weights.sum()


def next_token_losses(
    logits: Float[Tensor, "batch pos vocab"],
    tokens: Int[Tensor, "batch pos"],
    mask: torch.Tensor,
) -> Float[Tensor, " batch"]:
    """:func:`next_token_loss` of each sequence on its own, in one pass: a backward through the
    summed losses touches the logits once, not once per sequence (slicing the logits per row
    would zero-fill a full-size gradient for every row)."""
    per_token, weights = _token_losses(logits, tokens, mask)
    return (per_token * weights).sum(-1) / weights.sum(-1)


def _token_losses(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token cross-entropy of the next token, ``[batch, pos - 1]``, and its 0/1 weights."""
    targets_ok = mask[:, 1:] & mask[:, :-1]
    per_token = F.cross_entropy(
        rearrange(_at_least_float32(logits[:, :-1]), "b p v -> (b p) v"),
        rearrange(tokens[:, 1:], "b p -> (b p)"),
        reduction="none",
    )
    per_token = rearrange(per_token, "(b p) -> b p", b=tokens.shape[0])
    return per_token, targets_ok.to(per_token.dtype)


def _at_least_float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _loss(model, tokens: Tensor, mask: Tensor, layer_causal: bool) -> Tensor:
    attention_mask = mask.long() if not bool(mask.all()) else None
    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
    if not layer_causal:
        return next_token_loss(model(tokens, **kwargs), tokens, mask)
    return layer_causal_loss(model, tokens, mask, **kwargs)


def layer_causal_loss(model, tokens: Tensor, mask: Tensor, **forward_kwargs) -> Tensor:
    """``Σ_ℓ CE(unembed(ln_final(resid_post_ℓ)))`` with each block's input detached."""
    resid: dict[int, Tensor] = {}

    def detach(act: Tensor, hook) -> Tensor:
        return act.detach()

    def keep(act: Tensor, hook, *, layer: int) -> None:
        resid[layer] = act

    pairs = []
    for layer in range(n_layers(model)):
        pairs.append((hook_name("resid_pre", layer), detach))
        pairs.append((hook_name("resid_post", layer), partial(keep, layer=layer)))
    with hooks(model, pairs):
        model(tokens, **forward_kwargs)
    return sum(
        next_token_loss(model.unembed(model.ln_final(resid[layer])), tokens, mask)
        for layer in sorted(resid)
    )


def check_finite_grads(grads: Sequence[Tensor], params: dict, step: int, lr: float) -> None:
    worst = float(torch.stack([g.detach().abs().amax().double() for g in grads]).max())
    if math.isfinite(lr * worst):  # NaN propagates through max: one check, one sync
        return
    for name, g in zip(params, grads, strict=True):
        if not bool(torch.isfinite(g).all()) or not math.isfinite(lr * float(g.abs().max())):
            raise FinetuneDivergedError(
                f"Finetuning diverged at step {step}: the update of {name} is not finite "
                f"(lr={lr}). Use a smaller lr."
            )


def check_loss(loss: Tensor, history: list[float], step: int, lr: float, factor: float) -> None:
    value = loss.item()
    if not math.isfinite(value):
        raise FinetuneDivergedError(
            f"Finetuning diverged at step {step}: loss is {value} (lr={lr}). Use a smaller lr."
        )
    if history and value > factor * max(history[0], 1e-8):
        raise FinetuneDivergedError(
            f"Finetuning exploded at step {step}: loss {value:.4g} > {factor}× the first loss "
            f"{history[0]:.4g} (lr={lr}). Use a smaller lr."
        )
