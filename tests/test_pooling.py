"""Paired differences pair the same replicate's same examples: trained − untrained over the
untrained baseline's first examples, never a subset that depends on each model's answers."""

import numpy as np
import pytest

from dualform.experiments.dai.metric_names import REC2FTP, SIMAOU, f2t
from dualform.experiments.dai.pooling import differences
from dualform.experiments.dai.results import MetricSet, SeedResult, Selection, Summary
from dualform.experiments.stats import paired_difference


def _seed(replicate: int, per_metric: dict[str, list[float]]) -> SeedResult:
    metrics = MetricSet({name: Summary.scalar(float(np.mean(v)), v) for name, v in per_metric.items()})
    selection = Selection(1 + 1000 * replicate, 0.1, {"1": 50.0}, {"0.1": 50.0})
    return SeedResult(replicate, selection, metrics, 0)


def test_trained_minus_untrained_uses_the_untrained_subset_of_first_examples():
    rng = np.random.default_rng(0)
    trained = [rng.uniform(size=10).tolist() for _ in range(2)]
    untrained = [rng.uniform(size=4).tolist() for _ in range(2)]
    got = differences([[_seed(r, {SIMAOU: trained[r]}) for r in range(2)]],
                      [[_seed(r, {SIMAOU: untrained[r]}) for r in range(2)]])
    want = paired_difference([t[:4] for t in trained], untrained)
    assert got[f"trained − untrained: {SIMAOU}"] == want
    assert got[f"trained − untrained: {SIMAOU}"].n == 8  # 2 seeds × the 4 first examples


def test_pairs_follow_the_replicate_when_seeds_lack_a_metric():
    trained = [_seed(0, {SIMAOU: [1.0, 1.0]}), _seed(1, {}), _seed(2, {SIMAOU: [3.0, 3.0]})]
    untrained = [_seed(0, {SIMAOU: [0.0, 0.0]}), _seed(1, {SIMAOU: [9.0, 9.0]}), _seed(2, {})]
    got = differences([trained], [untrained])[f"trained − untrained: {SIMAOU}"]
    assert got.mean == pytest.approx(1.0) and got.n == 2  # replicate 0 only, not 2 − 1


def test_subsets_chosen_by_each_models_answers_are_never_paired():
    same_count = [0.5, 0.5, 0.5]  # equal counts would have paired unrelated examples
    seeds = [[_seed(0, {REC2FTP: same_count, f2t(SIMAOU): same_count})]]
    assert not [k for k in differences(seeds, seeds) if k.startswith("trained − untrained")]
