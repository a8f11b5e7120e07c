"""Summary statistics shared by every experiment: means, spreads and bootstrap intervals.

One home for "a number with its uncertainty". Every random draw goes through an explicit
``numpy.random.Generator`` (never the global stream), so an interval is reproducible from its
seed.

* :func:`mean_std` — mean, sample standard deviation and count.
* :func:`bootstrap_ci` — percentile bootstrap of the mean of grouped observations: groups (e.g.
  seeds) are resampled, then observations (e.g. test examples) within each drawn group — the
  two-level resampling that accounts for both sources of variation.
* :func:`bootstrap_columns` — :func:`bootstrap_ci` of many columns (layers, heads) at once.
* :func:`paired_difference` — the same for ``a − b`` on paired observations (same seeds, same
  examples), e.g. trained vs untrained model.
* :func:`proportion_ci` — a rate ``k / n`` with its Wilson score interval (e.g. the share of
  seeds whose training failed; the bootstrap would give ``[0, 0]`` for ``0 / n``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval: ``mean [low, high]`` over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval (the effect is distinguishable from it);
        False for an interval with no values (``nan`` bounds: nothing is distinguishable)."""
        return bool(self.low > value or self.high < value)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Interval:
        return cls(**data)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` with the sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def _as_groups(values: Sequence[float] | Sequence[Sequence[float]]) -> list[np.ndarray]:
    """A flat sequence is one group; a sequence of sequences is one group per entry."""
    if len(values) and not np.isscalar(values[0]):
        groups = [np.asarray(g, dtype=np.float64) for g in values]
    else:
        groups = [np.asarray(values, dtype=np.float64)]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if g.size]
    if not groups:
        raise ValueError("no finite values to summarise")
    return groups


def draw_counts(rng: np.random.Generator, sizes: Sequence[int], n_boot: int) -> list[np.ndarray]:
    """The two-level bootstrap's draws as multiplicities: per group, ``[n_boot, size]`` — how
    often draw ``b`` took each observation. Draw ``b`` resamples the groups with replacement,
    then the observations within each drawn group: a group drawn ``m`` times has its ``size``
    observations drawn ``m · size`` times, uniformly (``Multinomial(m · size, 1/size)``, the
    same law as ``m`` separate resamples; drawn as ``m · size`` uniform indices). A draw's mean
    is ``Σ_g counts_g[b] · x_g`` over ``Σ_g counts_g[b].sum()``."""
    n_groups = len(sizes)
    picks = rng.integers(0, n_groups, (n_boot, n_groups)) if n_groups > 1 else np.zeros((n_boot, 1), int)
    times = np.stack([(picks == g).sum(1) for g in range(n_groups)], 1)  # [draw, group]
    counts = []
    for g, size in enumerate(sizes):
        draws = times[:, g] * size  # observations drawn from group g in each bootstrap draw
        slot = np.repeat(np.arange(n_boot) * size, draws) + rng.integers(0, size, draws.sum())
        counts.append(np.bincount(slot, minlength=n_boot * size).reshape(n_boot, size).astype(np.float64))
    return counts


def bootstrap_ci(
    values: Sequence[float] | Sequence[Sequence[float]],
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Interval:
    """Mean of ``values`` with a percentile-bootstrap confidence interval.

    ``values`` is either flat (one group: observations are resampled) or grouped
    (``[[x_11, x_12, …], [x_21, …], …]``, e.g. per seed then per test example): each bootstrap
    draw resamples the groups with replacement, then the observations within each drawn group,
    and takes the mean over all drawn observations. Non-finite values are dropped. The point
    estimate is the plain mean over all observations.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    groups = _as_groups(values)
    rng = np.random.default_rng(seed)
    n = sum(g.size for g in groups)
    mean = float(np.concatenate(groups).mean())
    if n == 1:
        return Interval(mean, mean, mean, 1)
    counts = draw_counts(rng, [g.size for g in groups], n_boot)
    means = sum(c @ g for c, g in zip(counts, groups, strict=True)) / sum(c.sum(1) for c in counts)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), n)


def paired_difference(
    a: Sequence[float] | Sequence[Sequence[float]],
    b: Sequence[float] | Sequence[Sequence[float]],
    **kwargs,
) -> Interval:
    """:func:`bootstrap_ci` of ``a − b`` for paired observations (same layout in ``a`` and ``b``)."""
    a_groups, b_groups = _nested(a), _nested(b)
    if [len(g) for g in a_groups] != [len(g) for g in b_groups]:
        raise ValueError("paired_difference needs a and b with the same groups and lengths")
    diff = [[x - y for x, y in zip(ga, gb, strict=True)] for ga, gb in zip(a_groups, b_groups,
                                                                          strict=True)]
    return bootstrap_ci(diff, **kwargs)


def _nested(values) -> list[list[float]]:
    if len(values) and not np.isscalar(values[0]):
        return [[float(x) for x in g] for g in values]
    return [[float(x) for x in values]]



def proportion_ci(k: int, n: int, *, confidence: float = CONFIDENCE) -> Interval:
    """``k / n`` with the Wilson score interval.

    ``(p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``, ``z`` the normal quantile of
    ``(1 + confidence) / 2``; unlike the bootstrap it is not degenerate at ``k = 0`` or ``k = n``.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"proportion_ci needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def bootstrap_columns(
    groups: Sequence[np.ndarray],
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> list[Interval]:
    """:func:`bootstrap_ci` of many columns at once (e.g. every layer, or every layer×head).

    ``groups`` are ``[observation, column]`` arrays (e.g. one per seed, rows = test examples);
    each draw resamples groups, then rows within each drawn group — the same rows for every
    column — and takes each column's mean over its finite drawn values. Returns one
    :class:`Interval` per column (``nan`` where a column has no finite value).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    groups = [np.asarray(g, dtype=np.float64).reshape(len(g), -1) for g in groups if len(g)]
    if not groups:
        raise ValueError("no values to summarise")
    finite = [np.isfinite(g) for g in groups]
    values = [np.where(f, g, 0.0) for g, f in zip(groups, finite, strict=True)]
    counts = draw_counts(np.random.default_rng(seed), [len(g) for g in groups], n_boot)
    total = sum(c @ v for c, v in zip(counts, values, strict=True))
    count = sum(c @ f for c, f in zip(counts, finite, strict=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / count  # [draw, column]
    alpha = (1 - confidence) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        point = sum(v.sum(0) for v in values) / sum(f.sum(0) for f in finite)
    n = sum(f.sum(0) for f in finite)
    lows, highs = np.full((2, means.shape[1]), np.nan)  # a column no draw has a value for: nan
    some = ~np.isnan(means).all(0)  # (not a warnings filter: those are process-wide, not per thread)
    if some.any():
        lows[some], highs[some] = np.nanquantile(means[:, some], [alpha, 1 - alpha], axis=0)
    return [Interval(float(p), float(lo), float(hi), int(k))
            for p, lo, hi, k in zip(point, lows, highs, n, strict=True)]
