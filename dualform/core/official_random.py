"""The official scripts' random streams, reproduced without touching any global state.

``compute_sim.py`` and ``compute_training_example_attn.py`` (``microsoft/LMOps``) draw their
random baselines from numpy's global legacy stream (``np.random.random``) and Python's
``random.randint``. Here each baseline gets its own generator seeded as the scripts would be
seeded: :func:`official_stream` is the numpy one, and :func:`randints` draws a run of Python's
``randint`` calls in one go, value for value, leaving the ``random.Random`` where the calls
would leave it.
"""

from __future__ import annotations

import random

import numpy as np


def official_stream(seed: int) -> np.random.RandomState:
    """The official scripts' random stream, seeded: ``official_stream(s).random(shape)`` equals
    ``np.random.seed(s); np.random.random(shape)`` bit for bit (legacy Mersenne Twister), without
    touching numpy's global state."""
    return np.random.RandomState(seed)


#: The most raw Mersenne-Twister outputs :func:`randints` draws at a time (8 MiB as uint64).
_CHUNK = 1 << 20


def randints(rng: random.Random, n: int, count: int) -> np.ndarray:
    """``[rng.randint(0, n − 1) for _ in range(count)]`` as an int64 array, leaving ``rng`` in
    the same state, drawn by numpy's MT19937 from a copy of ``rng``'s state. CPython draws
    ``randint(0, n − 1)`` by rejection: with b = n.bit_length() ≤ 32, ``out >> (32 − b)`` of one
    32-bit Mersenne-Twister output, again while ≥ n. Other generators, and b > 32, are drawn
    one by one."""
    b = n.bit_length()
    if type(rng) is not random.Random or n < 1 or b > 32 or count < 1:
        return np.array([rng.randint(0, n - 1) for _ in range(count)], dtype=np.int64)
    version, words, gauss = rng.getstate()
    state = {"bit_generator": "MT19937",
             "state": {"key": np.array(words[:-1], dtype=np.uint32), "pos": words[-1]}}
    bits, kept, got, used = np.random.MT19937(), [], 0, 0
    bits.state = state
    while got < count:  # chunks of ~1.05× the outputs expected to be needed, at most _CHUNK
        raw = bits.random_raw(min(int((count - got) * (1 << b) / n * 1.05) + 64, _CHUNK))
        raw >>= 32 - b
        accepted = np.flatnonzero(raw < n)[: count - got]
        kept.append(raw[accepted])
        got += len(accepted)
        used += int(accepted[-1]) + 1 if got == count else len(raw)
    bits.state = state  # rewind, then advance by exactly the outputs the draws used
    bits.random_raw(used)
    after = bits.state["state"]
    rng.setstate((version, (*(int(w) for w in after["key"]), int(after["pos"])), gauss))
    return np.concatenate(kept).astype(np.int64)
