"""Several runs of :func:`dualform.core.finetune.finetune_kv` in one batched run.

An LR grid trains the same model on the same demonstrations in the same order; the runs differ
only in their W_K/W_V (:func:`finetune_kv_grid`). Independent demonstration sets (seeds) × rates
differ in their texts too (:func:`finetune_kv_rows`): step ``t`` feeds every row its own
``t``-th text, right-padded to one width. On a CPU (and for short demonstrations on a GPU) an
SGD step is bound by reading the frozen weights, so the grid runs as one batch (on a CPU, more
than :data:`CPU_MAX_ROWS` rows as several): row ``r`` holds its tokens and sees the model with
rate ``r``'s own W_K/W_V. Each row's loss depends only on its own weights,
so the gradient of the summed losses gives every run exactly its own gradient, and every run is
plain batch-size-1 SGD, as in :func:`finetune_kv` (the same numbers, up to float rounding).

The K/V projections of a private copy of the model (sharing every frozen weight) are swapped for
:class:`GridLinear` modules holding one weight per rate. A run whose loss turns NaN/inf or
explodes is dropped from the batch at that step and reported as a :class:`FinetuneDivergedError`;
the others go on. After training the copy is the batch's scratch model (:class:`TrainedRows`):
a row's result lends its weights to it, and builds its own copy and ΔW only when asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from tqdm.auto import tqdm

from dualform.core.equations import delta_w_ft
from dualform.core.finetune import (
    FinetuneDivergedError,
    FinetuneResult,
    check_finetune_args,
    check_finite_grads,
    check_loss,
    check_update,
    copy_for_finetuning,
    kv_parameters,
    master_weights,
    next_token_losses,
    sgd_step,
    training_batches,
)
from dualform.core.prefix import pad_tokens
from dualform.errors import check_count, check_learning_rates
from dualform.models.features import sync_fused_kv
from dualform.probes import head_counts

#: Rows per batched run on a CPU, for memory: the backward keeps every row's activations. On 2
#: cores an SGD step costs per row 52 ms at 12 rows, 50 ms at 16–20, 47 ms at 28–40
#: (SmolLM2-135M, 32-shot texts, ``python analyses/bench_grid_rows.py --rows 16 20 24 28 40
#: --repeats 3``), but a 10-seed task's 40 rows (32 steps) in one batch took 57.4 s at a
#: 5.57 GiB peak against 62.4 s at 3.86 GiB as two batches of 20.
CPU_MAX_ROWS = 20


class GridLinear(nn.Module):
    """``y[r] = x[r] W_r^T + b_r``: a linear layer with one weight per rate. The batch holds the
    rates' inputs rate-major: one row per rate when training, ``k`` consecutive rows per rate
    when every rate runs the same ``k`` queries (:meth:`TrainedRows.as_grid`)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # [rate, out, in]
        self.bias = None if bias is None else nn.Parameter(bias)  # [rate, out]

    def forward(self, x: Tensor) -> Tensor:
        per_rate = x.shape[0] // self.weight.shape[0]
        grouped = rearrange(x, "(rate row) pos d_in -> rate (row pos) d_in", row=per_rate)
        out = _RowMatmul.apply(grouped, self.weight)
        if self.bias is not None:
            out = out + self.bias[:, None, :]
        return rearrange(out, "rate (row pos) d_out -> (rate row) pos d_out", row=per_rate)


class _RowMatmul(torch.autograd.Function):
    """``y[r] = x[r] W_r^T`` (``einsum("rate pos d_in, rate d_out d_in -> rate pos d_out")``)
    whose weight gradient ``g[r]^T x[r]`` is formed directly as ``[rate, d_out, d_in]``, the
    layout SGD updates (einsum's backward forms its transpose, and the update then strides)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.bmm(x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


def finetune_kv_grid(
    model, texts: Sequence[str] | Sequence[Tensor], lrs: Sequence[float], *,
    explode_factor: float = 4.0, max_update_ratio: float = 1.0, progress: bool = False,
) -> list[FinetuneResult | FinetuneDivergedError]:
    """``[finetune_kv(model, texts, lr) for lr in lrs]`` in one batched run (batch size 1, one
    epoch, in order, plain loss); a diverged rate gives its :class:`FinetuneDivergedError`."""
    return finetune_kv_rows(model, [(texts, lr) for lr in lrs], explode_factor=explode_factor,
                            max_update_ratio=max_update_ratio, progress=progress)


def finetune_kv_rows(
    model, rows: Sequence[tuple[Sequence[str] | Sequence[Tensor], float]], *,
    explode_factor: float = 4.0, max_update_ratio: float = 1.0, progress: bool = False,
    max_rows: int | None = None,
) -> list[FinetuneResult | FinetuneDivergedError]:
    """``[finetune_kv(model, texts, lr) for texts, lr in rows]`` in batched runs: row ``r``
    has its own W_K/W_V, its own rate and its own texts (e.g. every demonstration seed × every
    rate). Step ``t`` trains each row on its ``t``-th text; the texts of one step are
    right-padded to one width (a causal model never attends to the padding on the right, and the
    loss skips it), so each row is plain batch-size-1 SGD as in :func:`finetune_kv`.

    More than ``max_rows`` rows run as several equal batches (default: :data:`CPU_MAX_ROWS` on
    a CPU, all rows at once on a GPU)."""
    n_steps = {len(texts) for texts, _ in rows}
    if len(n_steps) != 1:
        raise ValueError(f"finetune_kv_rows needs the same number of texts in every row, got {n_steps}")
    lrs = [lr for _, lr in rows]
    check_learning_rates(lrs)
    for texts, lr in rows:
        check_finetune_args(texts, lr)
    if max_rows is None:
        on_cpu = next(model.parameters()).device.type == "cpu"
        max_rows = CPU_MAX_ROWS if on_cpu else len(rows)
    check_count(max_rows, "max_rows")
    n_batches = -(-len(rows) // max_rows)
    if n_batches > 1:
        size = -(-len(rows) // n_batches)
        return [run for start in range(0, len(rows), size)
                for run in _finetune_batch(model, rows[start : start + size], explode_factor,
                                           max_update_ratio, progress)]
    return _finetune_batch(model, rows, explode_factor, max_update_ratio, progress)


def _finetune_batch(model, rows, explode_factor: float, max_update_ratio: float,
                    progress: bool) -> list[FinetuneResult | FinetuneDivergedError]:
    """:func:`finetune_kv_rows` of rows already checked, in one batched run."""
    lrs = [lr for _, lr in rows]
    grid, params, originals = _grid_model(model, len(rows))
    master = master_weights(params)
    before = {name: m[0].clone() for name, m in master.items()}  # every row starts as the model
    rates = torch.tensor(lrs, dtype=torch.float64)
    losses: list[list[float]] = [[] for _ in rows]
    failed: dict[int, FinetuneDivergedError] = {}
    steps = _row_steps(grid, [texts for texts, _ in rows])
    desc = "finetune W_K/W_V (batched rows)"
    for step, (tokens, mask) in enumerate(tqdm(steps, desc=desc, disable=not progress)):
        every_row = next_token_losses(grid(tokens), tokens, mask)
        row_losses = {r: every_row[r] for r in range(len(rows)) if r not in failed}
        for r in list(row_losses):
            _drop_if_diverged(r, failed, row_losses, check_loss, row_losses[r], losses[r], step,
                              lrs[r], explode_factor)
        if not row_losses:
            break
        grads = torch.autograd.grad(sum(row_losses.values()), list(params.values()))
        for r in suspect_rows(grads):
            if r in row_losses:
                _drop_if_diverged(r, failed, row_losses, check_finite_grads, [g[r] for g in grads],
                                  params, step, lrs[r])
        if not row_losses:
            break
        keep = torch.tensor([r in row_losses for r in range(len(rows))])
        step_size = torch.where(keep, rates, torch.zeros_like(rates))
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads, strict=True):
                m = master[name]
                sgd_step(p, m, g, step_size.to(m.dtype).view(-1, *[1] * (m.ndim - 1)))
        for r, loss in row_losses.items():
            losses[r].append(loss.item())
    for r in range(len(lrs)):
        if r not in failed:
            _drop_if_diverged(r, failed, {r: None}, check_update,
                              {n: master[n][r] - before[n] for n in master},
                              before, lrs[r], max_update_ratio)
    linears = _kv_linears(grid)
    swapped = {name: linears[name].original_component for name in originals}
    for name, inner in originals.items():  # the copy turns into the rows' scratch model
        linears[name].set_original_component(inner)
    trained = TrainedRows(model, grid, master, before, swapped)
    n_kv = head_counts(model)[1]
    return [failed.get(r) or FinetuneResult(None, None, losses[r], lrs[r], False, n_kv,
                                            row=Row(trained, r))
            for r in range(len(rows))]


def suspect_rows(grads: Sequence[Tensor]) -> list[int]:
    """Rows whose gradient may hold a NaN or inf (``grads``: one ``[row, ...]`` tensor per
    weight). One sum per weight screens every row: a sum is finite when every entry is (NaN and
    inf propagate), so only these rows need :func:`check_finite_grads` (a sum that overflows
    on finite entries only sends its row there)."""
    sums = torch.stack([g.detach().flatten(1).sum(1) for g in grads]).sum(0)
    return torch.nonzero(~torch.isfinite(sums)).flatten().tolist()


def _row_steps(model, texts_per_row: Sequence[Sequence]) -> list[tuple[Tensor, Tensor]]:
    """Step ``t``: every row's ``t``-th text, right-padded to one width, and the real-token mask."""
    per_row = [training_batches(model, texts, 1) for texts in texts_per_row]
    device = next(model.parameters()).device
    steps = []
    for step in zip(*per_row, strict=True):
        tokens, mask = pad_tokens([t for t, _ in step], 0)
        steps.append((tokens.to(device), mask.to(device)))
    return steps


def _drop_if_diverged(r: int, failed: dict, live: dict, check, *args) -> None:
    """Run ``check(*args)`` for rate ``r``; if it raises, ``r`` moves from ``live`` to ``failed``."""
    try:
        check(*args)
    except FinetuneDivergedError as err:
        failed[r] = err
        del live[r]


def _grid_model(model, n_rates: int):
    """A copy of ``model`` (frozen weights shared) whose K/V projections hold ``n_rates``
    weights each; returns it, ``{kv parameter name: grid parameter}`` and the projections it
    swapped out (``{name: module}``)."""
    grid = copy_for_finetuning(model, None)
    grid.eval()
    params: dict[str, nn.Parameter] = {}
    originals: dict[str, nn.Module] = {}
    for name, linear in _kv_linears(grid).items():
        inner = originals[name] = linear.original_component
        bias = None if inner.bias is None else inner.bias.detach().repeat(n_rates, 1)
        swapped = GridLinear(inner.weight.detach().repeat(n_rates, 1, 1), bias)
        linear.set_original_component(swapped)
        params[f"{name}.weight"] = swapped.weight
        if bias is not None:
            params[f"{name}.bias"] = swapped.bias
    return grid, params, originals


def _kv_linears(model) -> dict[str, nn.Module]:
    return {f"blocks.{layer}.attn.{proj}": getattr(model.blocks[layer].attn, proj)
            for layer in range(model.cfg.n_layers) for proj in ("k", "v")}


class TrainedRows:
    """The trained K/V weights of a batched run (``master[name][row]``) and a scratch copy of the
    model (frozen weights shared) that lends them one row at a time."""

    def __init__(self, base, scratch, master: dict[str, Tensor], before: dict[str, Tensor],
                 grid_linears: dict[str, nn.Module]) -> None:
        self.base, self.scratch, self.master, self.before = base, scratch, master, before
        self.grid_linears = grid_linears  # the K/V projections that hold every row
        self.n_rows = next(iter(master.values())).shape[0]
        self.in_grid = False  # as_grid() is open: the scratch holds every row
        self.names = list(master)
        self.held: int | None = None  # the row the scratch holds
        self.lent = 0  # open loaded() blocks

    def load_into(self, model, r: int) -> None:
        """Row ``r``'s weights into ``model``'s K/V (frozen there, as :func:`finetune_kv` leaves them)."""
        with torch.no_grad():
            for name, p in kv_parameters(model).items():
                p.copy_(self.master[name][r])
                p.requires_grad_(False)
        sync_fused_kv(model)

    @contextmanager
    def as_grid(self) -> Iterator[nn.Module]:
        """The scratch copy computing every row at once (its K/V projections hold all the rows'
        trained weights): feed it ``k`` queries per row, rate-major (batch row ``i·k + j`` is
        query ``j`` on row ``i``). Refuses while a row is lent out."""
        if self.lent or self.in_grid:
            raise RuntimeError("This batched finetuning run cannot compute all its rows at once "
                               "now: a row is in use through loaded().")
        linears = _kv_linears(self.scratch)
        inner = {name: linears[name].original_component for name in self.grid_linears}
        self.in_grid = True
        try:
            for name, grid_linear in self.grid_linears.items():
                linears[name].set_original_component(grid_linear)
            yield self.scratch
        finally:
            for name, module in inner.items():
                linears[name].set_original_component(module)
            self.in_grid = False


@dataclass
class Row:
    """Row ``r`` of a :class:`TrainedRows`: what a lazy :class:`FinetuneResult` builds from."""

    rows: TrainedRows
    r: int

    @property
    def base(self):
        return self.rows.base

    @property
    def names(self) -> list[str]:
        return self.rows.names

    def build(self):
        """Its own copy sharing the frozen weights (as :func:`finetune_kv` returns)."""
        tuned = copy_for_finetuning(self.rows.base, None)
        tuned.eval()
        self.rows.load_into(tuned, self.r)
        return tuned

    def delta(self) -> dict[str, Tensor]:
        rows = self.rows
        return {name: delta_w_ft(rows.master[name][self.r], rows.before[name]) for name in rows.names}

    @contextmanager
    def loaded(self) -> Iterator[nn.Module]:
        """The scratch copy holding this row; refuses while it is lent out holding another."""
        rows = self.rows
        if rows.in_grid:
            raise RuntimeError(f"Row {self.r} cannot be loaded while its batched run computes every "
                               "row at once (as_grid()); use its .model instead.")
        if rows.held != self.r:
            if rows.lent:
                raise RuntimeError(
                    f"Row {rows.held} of this batched finetuning run is in use (loaded()); row "
                    f"{self.r} cannot be loaded at the same time: use its .model instead.")
            rows.load_into(rows.scratch, self.r)
            rows.held = self.r
        rows.lent += 1
        try:
            yield rows.scratch
        finally:
            rows.lent -= 1
