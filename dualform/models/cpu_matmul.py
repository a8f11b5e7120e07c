"""Float32 linear layers through oneDNN on CPUs where PyTorch's default BLAS is slow.

PyTorch runs a float32 ``nn.Linear`` on the CPU through MKL's sgemm. On AMD CPUs MKL picks
AVX2 code: about 220 GFLOP/s on the 2-core AMD EPYC (AVX-512) that runs dualform's CI, while
oneDNN's matmul, which ships inside PyTorch (``torch.ops.mkldnn._linear_pointwise``, the op
TorchInductor uses for CPU linears), runs AVX-512 there at about 500 GFLOP/s. Both compute in
float32 with float32 accumulation; they differ in the order of the sums, i.e. at float32
rounding (float64 and half-precision layers are never touched).

:func:`install_fast_linears` binds a ``forward`` to every float32 CPU ``nn.Linear`` of a model
that calls :func:`fast_linear`: oneDNN for a **frozen** weight (no ``requires_grad``; the input
may need its gradient, which oneDNN computes too), the default path for a weight being trained
(its gradient then comes from autograd as before). ``auto`` (:func:`use_onednn`) takes oneDNN
where PyTorch runs AVX-512 kernels and PyTorch's path elsewhere — a rule, not a per-process
timing probe, so two runs of one command on one machine take the same path and round alike
(the FT side of ``reproduce dai`` is chaotic in those roundings). The rule rests on
measurements (``dualform bench`` times both paths in every run, :func:`measured_speedup`):
oneDNN was 2.89× and 1.2–1.5× MKL on two 2-core AVX-512 AMD EPYC machines and 0.97–1.16× on
an AVX2-only one; a probe of a few milliseconds flipped the choice from run to run on the
latter two (on the second AVX-512 one, probes of 1.21–1.42× against a threshold of 1.15 chose
MKL in one run of seven).
``DUALFORM_CPU_MATMUL=onednn`` or ``=default`` overrides the rule. :func:`fast_linears` is
the context-manager form that leaves a user's model as it was.
"""

from __future__ import annotations

import functools
import os
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from dualform.errors import InvalidArgumentError

#: Environment variable choosing the float32 CPU linear path: ``auto`` (oneDNN on a CPU with
#: AVX-512 kernels, PyTorch's path elsewhere), ``onednn`` or ``default``.
BACKEND_ENV = "DUALFORM_CPU_MATMUL"
#: The product :func:`measured_speedup` times in ``dualform bench``: ``[rows, d_in] × [d_out,
#: d_in]`` (a batch of short prompts through a small model's layer).
PROBE_SHAPE = (128, 1024, 1024)


def onednn_linear(x: Float[Tensor, "rows d_in"], weight: Float[Tensor, "d_out d_in"],
                  bias: Float[Tensor, " d_out"] | None = None) -> Float[Tensor, "rows d_out"]:
    """``x W^T + b`` by oneDNN (no autograd)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _FrozenLinear(torch.autograd.Function):
    """``x W^T + b`` for a frozen ``W``/``b``: forward and the input's gradient by oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(weight)
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        return onednn_linear(grad, weight.t()), None, None  # ∂/∂x = g W


def fast_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, by oneDNN where that applies and this process chose it
    (:func:`use_onednn`): a float32 CPU input and a frozen float32 weight (and bias)."""
    if not _applies(x, weight, bias):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and x.requires_grad:
        out = _FrozenLinear.apply(flat, weight, bias)
    else:
        out = onednn_linear(flat, weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    return (frozen and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.dim() >= 2 and x.shape[-1] > 0
            and (bias is None or bias.dtype == torch.float32)
            and use_onednn())


def backend_setting() -> str:
    """``auto`` | ``onednn`` | ``default`` from :data:`BACKEND_ENV` (``auto`` when unset)."""
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "onednn", "default"):
        raise InvalidArgumentError(f"{BACKEND_ENV}={value!r}: choose auto, onednn or default.")
    return value


@functools.cache
def onednn_available() -> bool:
    """oneDNN's linear op is in this PyTorch build and agrees with ``F.linear`` on a probe."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(8, 16, generator=gen), torch.randn(4, 16, generator=gen)
        return torch.allclose(onednn_linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    except (AttributeError, RuntimeError):  # no such op, or no kernel for this CPU
        return False


@functools.cache
def use_onednn() -> bool:
    """Whether frozen float32 linears take the oneDNN path in this process: the
    :data:`BACKEND_ENV` setting, or (``auto``) whether PyTorch runs AVX-512 kernels here."""
    setting = backend_setting()
    if setting == "default" or not onednn_available():
        return False
    # auto: the gain is oneDNN's AVX-512 code where MKL runs AVX2 (AMD); the same rule on every
    # run of a machine (a timing probe near a threshold made the choice differ between runs)
    return setting == "onednn" or cpu_capability().startswith("AVX512")


def cpu_capability() -> str:
    """PyTorch's CPU kernel level here: ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"`` …"""
    return str(torch.backends.cpu.get_cpu_capability())


@contextmanager
def cpu_matmul_setting(value: str) -> Iterator[None]:
    """``DUALFORM_CPU_MATMUL=value`` for the block (the cached choice re-made inside and after)."""
    before = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = value
    use_onednn.cache_clear()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(BACKEND_ENV, None)
        else:
            os.environ[BACKEND_ENV] = before
        use_onednn.cache_clear()


def cpu_matmul_backend() -> str:
    """``"onednn"`` or ``"default"``: the path frozen float32 CPU linears take here."""
    return "onednn" if use_onednn() else "default"


def measured_speedup(rows: int, d_in: int, d_out: int, repeats: int = 5) -> float:
    """Time of ``F.linear`` / time of oneDNN on a ``[rows, d_in] × [d_out, d_in]`` float32
    product (best of ``repeats``, after a warm-up)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, d_in, generator=gen), torch.randn(d_out, d_in, generator=gen)
    return best_time(F.linear, x, w, repeats=repeats) / best_time(onednn_linear, x, w, repeats=repeats)


def best_product_rate(repeats: int = 30) -> float:
    """FLOP/s of the best of ``repeats`` float32 ``[1200, 576] × [576, 1536]`` products (the
    shape of SmolLM2-135M's MLP on a large batch), by PyTorch's default path (MKL) or by
    oneDNN, whichever is faster here: the rate a run's matrix products could reach at best."""
    a, w = torch.randn(1200, 576), torch.randn(1536, 576)
    paths = [F.linear, *([onednn_linear] if onednn_available() else [])]
    best = min(best_time(product, a, w, repeats=repeats) for product in paths)
    return 2 * a.shape[0] * a.shape[1] * w.shape[0] / best


def best_time(fn: Callable, *args: Tensor, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls ``fn(*args)``, after one warm-up call."""
    fn(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def _fast_forward(self: nn.Linear, x: Tensor) -> Tensor:
    return fast_linear(x, self.weight, self.bias)


def install_fast_linears(model: nn.Module) -> Callable[[], None]:
    """Bind :func:`fast_linear` as ``forward`` of every ``nn.Linear`` in ``model`` (bound
    methods: a deep copy calls its own weights); returns the undo."""
    patched = []
    for module in model.modules():
        if type(module) is nn.Linear and "forward" not in vars(module):
            module.forward = types.MethodType(_fast_forward, module)
            patched.append(module)

    def undo() -> None:
        for module in patched:
            vars(module).pop("forward", None)

    return undo


@contextmanager
def fast_linears(model: nn.Module) -> Iterator[nn.Module]:
    """:func:`install_fast_linears` for the duration of the block."""
    undo = install_fast_linears(model)
    try:
        yield model
    finally:
        undo()
