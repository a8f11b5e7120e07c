"""Seeded construction without touching the caller's random state.

Library code never seeds the global RNG: model constructors (Hugging Face ``from_config``,
TransformerLens ``HookedRootModule`` subclasses) draw their initial weights from torch's global
generator, so :func:`seeded` forks that state, seeds the fork and restores the caller's state on
exit. Everything else takes an explicit ``torch.Generator`` / ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the block torch's global generator (CPU and CUDA) starts from ``seed``; the
    caller's generator state is restored afterwards, as if nothing had been drawn."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
