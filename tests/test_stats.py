import warnings

import numpy as np
import pytest

from dualform.experiments.stats import (
    Interval,
    bootstrap_ci,
    bootstrap_columns,
    mean_std,
    paired_difference,
)


def test_mean_std_uses_the_sample_deviation():
    out = mean_std([1.0, 2.0, 3.0, 4.0])
    assert out == {"mean": 2.5, "std": pytest.approx(np.std([1, 2, 3, 4], ddof=1)), "n": 4}
    assert mean_std([5.0])["std"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.normal(1.0, 1.0, 20).tolist(), seed=3)
    large = bootstrap_ci(rng.normal(1.0, 1.0, 2000).tolist(), seed=3)
    assert small.low < small.mean < small.high and small.n == 20
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert large.low < 1.0 < large.high  # the true mean
    # normal-theory half-width 1.96·σ/√n, the percentile bootstrap is close to it
    assert (large.high - large.low) / 2 == pytest.approx(1.96 / np.sqrt(2000), rel=0.15)


def test_bootstrap_is_reproducible_and_drops_non_finite_values():
    values = [0.1, 0.5, float("nan"), 0.3, 0.9]
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7).n == 4
    with pytest.raises(ValueError, match="no finite"):
        bootstrap_ci([float("nan")])


def test_grouped_bootstrap_sees_the_spread_between_groups():
    # three seeds whose means differ a lot; within-seed noise is tiny
    groups = [[0.0 + 1e-3 * i for i in range(50)], [1.0] * 50, [2.0] * 50]
    grouped = bootstrap_ci(groups, seed=0)
    flat = bootstrap_ci([x for g in groups for x in g], seed=0)
    assert grouped.mean == pytest.approx(flat.mean)
    assert (grouped.high - grouped.low) > 3 * (flat.high - flat.low)


def test_paired_difference_and_interval_helpers():
    a = [[1.0, 2.0, 3.0], [2.0, 3.0]]
    b = [[0.5, 1.5, 2.5], [1.5, 2.5]]
    diff = paired_difference(a, b, seed=0)
    assert diff.mean == pytest.approx(0.5) and diff.low == pytest.approx(0.5)
    assert diff.excludes(0.0) and not diff.excludes(0.5)
    nan = float("nan")
    assert not Interval(nan, nan, nan, 0).excludes(0.0)  # no values: no head is marked
    groups = [np.array([[1.0, nan], [2.0, nan]]), np.array([[1.5, nan]])]  # column 1: all nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-nan column is expected: no warning to filter
        assert [i.excludes(0.0) for i in bootstrap_columns(groups)] == [True, False]
    assert Interval.from_json(diff.to_json()) == diff
    assert str(Interval(0.377, 0.331, 0.42, 10)) == "0.377 [0.331, 0.420]"
    with pytest.raises(ValueError, match="same groups"):
        paired_difference([1.0, 2.0], [1.0])


def test_bootstrap_columns_equals_bootstrap_ci_column_by_column():
    """Same draws as bootstrap_ci (groups, then rows), shared by every column; NaN skipped per column."""
    rng = np.random.default_rng(4)
    groups = [rng.normal(size=(30, 3)), rng.normal(0.5, 1.0, size=(20, 3))]
    columns = bootstrap_columns(groups, seed=5, n_boot=300)
    for c, interval in enumerate(columns):
        want = bootstrap_ci([g[:, c].tolist() for g in groups], seed=5, n_boot=300)
        assert interval.n == want.n
        np.testing.assert_allclose([interval.mean, interval.low, interval.high],
                                   [want.mean, want.low, want.high], rtol=1e-12)
    groups[0][0, 1] = np.nan
    with_nan = bootstrap_columns(groups, seed=5, n_boot=300)
    assert with_nan[1].n == 49 and np.isfinite([with_nan[1].low, with_nan[1].high]).all()
    assert with_nan[0] == columns[0]


@pytest.mark.parametrize("n_groups", [1, 3])
def test_draw_counts_resample_groups_then_observations(n_groups):
    from dualform.experiments.stats import draw_counts

    sizes = [5, 8, 13][:n_groups]
    counts = draw_counts(np.random.default_rng(0), sizes, 4000)
    per_group = np.stack([c.sum(1) / size for c, size in zip(counts, sizes, strict=True)], 1)  # times drawn
    assert np.array_equal(per_group, np.round(per_group)) and (per_group.sum(1) == n_groups).all()
    assert all(c.shape == (4000, size) for c, size in zip(counts, sizes, strict=True))
    for c in counts:  # every observation is taken once per draw on average
        np.testing.assert_allclose(c.mean(0), 1.0, atol=0.1)
    if n_groups > 1:  # groups are drawn with replacement: some draws leave a group out
        assert (per_group == 0).any() and (per_group >= 2).any()


def test_intervals_are_the_quantiles_of_the_draw_means():
    from dualform.experiments.stats import draw_counts

    rng = np.random.default_rng(3)
    groups = [rng.normal(size=(int(rng.integers(5, 40)), 4)) for _ in range(3)]
    groups[0][1, 2] = np.nan
    groups[-1][:, 3] = np.nan  # a column one group has no value for
    counts = draw_counts(np.random.default_rng(7), [len(g) for g in groups], 200)
    got = bootstrap_columns(groups, seed=7, n_boot=200)
    for c, interval in enumerate(got):
        finite = [np.isfinite(g[:, c]) for g in groups]
        with np.errstate(invalid="ignore"):  # a draw of only groups without the column: 0/0
            means = (sum(k @ np.where(f, g[:, c], 0) for k, f, g in zip(counts, finite, groups, strict=True))
                     / sum(k @ f for k, f in zip(counts, finite, strict=True)))
        np.testing.assert_allclose([interval.low, interval.high],
                                   np.quantile(means[np.isfinite(means)], [0.025, 0.975]), rtol=1e-12)
        assert interval.n == sum(f.sum() for f in finite)
