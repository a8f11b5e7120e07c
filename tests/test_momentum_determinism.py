"""A momentum run depends on its seed only: explicit generators, no global RNG seeding."""

from __future__ import annotations

import math

import pytest
import torch

from dualform.experiments.momentum.experiment import Job, MomentumConfig, train_and_evaluate
from dualform.experiments.momentum.model import MomentumLM, MomentumLMConfig
from dualform.infra.executors import LocalExecutor

pytestmark = pytest.mark.usefixtures("single_thread")


def test_a_seed_is_reproducible_whatever_the_global_rng_state(tmp_path):
    config = MomentumConfig.tiny()
    job = Job("momentum", 0.5, seed=1)
    torch.manual_seed(123)  # the test, not the library, touches the global stream
    state = torch.get_rng_state()
    first = train_and_evaluate(config, job, str(tmp_path), progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the library drew nothing from it
    torch.rand(1000)  # move the global stream
    second = train_and_evaluate(config, job, str(tmp_path), progress=False)
    assert first["losses"] == second["losses"]
    assert first["perplexity"] == second["perplexity"]
    assert first["icl_correct"] == second["icl_correct"]
    other = train_and_evaluate(config, Job("momentum", 0.5, seed=2), str(tmp_path), progress=False)
    assert other["losses"] != first["losses"]


def test_twins_start_from_the_same_weights_drawn_from_a_generator():
    cfg = MomentumLMConfig(d_vocab=20, n_ctx=8, d_model=16, n_heads=2, seed=4)
    state = torch.get_rng_state()
    vanilla = MomentumLM(cfg)
    momentum = MomentumLM(MomentumLMConfig(**{**cfg.__dict__, "eta": 0.3}))
    explicit = MomentumLM(cfg, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    for name, weight in vanilla.named_parameters():
        assert torch.equal(weight, momentum.state_dict()[name])
        assert torch.equal(weight, explicit.state_dict()[name])


def test_local_executor_in_processes_reports_every_job():
    outcomes = list(LocalExecutor(progress=False, workers=2).map(math.sqrt, [4.0, -1.0, 9.0]))
    assert sorted(item for item, _, _ in outcomes) == [-1.0, 4.0, 9.0]
    by_item = {item: (result, error) for item, result, error in outcomes}
    assert by_item[4.0] == (2.0, None) and by_item[9.0] == (3.0, None)
    assert isinstance(by_item[-1.0][1], ValueError) and by_item[-1.0][0] is None
