"""Deterministic, seeded, disjoint train / validation / test splits of task examples.

Used by :mod:`dualform.tasks.prompts`; the splitting rules in one short place:

* duplicates (same input fields) are kept once, so no input can land in two splits;
* each class is sorted (file order never matters), then shuffled with the seed;
* ``balanced=True`` cuts every class to the smallest one and gives each split equal per-class
  quotas (the first classes get the remainder); a split that takes everything left (train by
  default) takes it whole, so its class counts differ by at most the evaluation splits' remainders;
* ``test`` is drawn first, then ``validation``, then ``train`` (default: all the rest), so
  changing ``n_train`` never changes the evaluation sets; ``None`` sizes default to 25% (test,
  at most 400) and 12.5% (validation, at most 200) of the pool.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from dualform.tasks.sources import Example, TaskError

Sizes = dict[str, int | None]
Splits = dict[str, list[Example]]


def split_pool(pool: Sequence[Example], n_classes: int, sizes: Sizes, *, seed: int,
               balanced: bool, name: str) -> Splits:
    """Split one pool of examples into ``test``, ``validation`` and ``train``."""
    by_class = by_class_shuffled(dedupe(pool), n_classes, random.Random(seed), balanced)
    total = sum(len(c) for c in by_class)
    unit = n_classes if balanced else 1
    defaults = {"test": min(400, total // 4) // unit * unit,
                "validation": min(200, total // 8) // unit * unit}
    rng = random.Random(seed + 1)
    splits: Splits = {}
    for split in ("test", "validation", "train"):
        n = sizes.get(split)
        if n is None:
            n = sum(len(c) for c in by_class) if split == "train" else defaults[split]
        splits[split], by_class = draw(by_class, n, rng, balanced, f"{name}/{split}")
    return splits


def dedupe(pool: Sequence[Example]) -> list[Example]:
    """Keep the first example of each distinct input."""
    seen, out = set(), []
    for example in pool:
        if example.key() not in seen:
            seen.add(example.key())
            out.append(example)
    return out


def by_class_shuffled(pool: Sequence[Example], n_classes: int, rng: random.Random,
                      balanced: bool) -> list[list[Example]]:
    """Per-class lists, sorted then shuffled with ``rng``; cut to the smallest if balanced."""
    by_class = [sorted((e for e in pool if e.label == c), key=Example.key)
                for c in range(n_classes)]
    for examples in by_class:
        rng.shuffle(examples)
    if balanced:
        smallest = min(len(c) for c in by_class)
        by_class = [c[:smallest] for c in by_class]
    return by_class


def draw(by_class: list[list[Example]], n: int, rng: random.Random, balanced: bool,
         what: str) -> tuple[list[Example], list[list[Example]]]:
    """Take ``n`` examples (equal per-class quotas if balanced); return them shuffled + the rest."""
    available = sum(len(c) for c in by_class)
    if n < 0 or n > available:
        raise TaskError(f"{what}: asked for {n} examples but only {available} are left.")
    if balanced and n == available:  # everything left (train by default), as the classes are
        quotas = [len(c) for c in by_class]
    elif balanced:
        k = len(by_class)
        quotas = [n // k + (c < n % k) for c in range(k)]
        if any(q > len(c) for q, c in zip(quotas, by_class, strict=True)):
            raise TaskError(f"{what}: {n} examples can't be split evenly over {k} classes.")
    else:
        flat = [c for c, examples in enumerate(by_class) for _ in examples]
        rng.shuffle(flat)
        quotas = [flat[:n].count(c) for c in range(len(by_class))]
    taken = [e for q, c in zip(quotas, by_class, strict=True) for e in c[:q]]
    rng.shuffle(taken)
    return taken, [c[q:] for q, c in zip(quotas, by_class, strict=True)]


def split_hub(hub: dict[str, list[Example] | None], sizes: Sizes, seed: int) -> Splits:
    """Keep a hub dataset's splits (subsampled to ``sizes``); carve missing ones (``None``) from
    train; drop train examples whose input also occurs in validation or test."""
    rng = random.Random(seed)
    train = dedupe(hub["train"] or [])
    out: Splits = {}
    for split in ("test", "validation"):
        n = sizes.get(split)
        if hub.get(split) is None:
            n = n if n is not None else min(200, len(train) // 10)
            rng.shuffle(train)
            out[split], train = train[:n], train[n:]
        else:
            out[split] = subsample(dedupe(hub[split]), n, rng)
    held_out = {e.key() for examples in out.values() for e in examples}
    out["train"] = subsample([e for e in train if e.key() not in held_out], sizes.get("train"), rng)
    return out


def subsample(examples: list[Example], n: int | None, rng: random.Random) -> list[Example]:
    """A seeded random subset of size ``n`` (all of them if ``n`` is None or too large)."""
    if n is None or n >= len(examples):
        return examples
    return rng.sample(examples, n)
