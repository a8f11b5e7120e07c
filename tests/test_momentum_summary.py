"""The momentum experiment end to end (tiny config): paired differences, failure rates, verdict."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dualform.experiments.momentum import experiment
from dualform.experiments.momentum.experiment import (
    PAPER,
    Job,
    MomentumConfig,
    load_run,
    run_momentum,
)
from dualform.experiments.momentum.summary import (
    direction,
    failure_rate,
    learned,
    learned_threshold,
    pair_runs,
    summarise,
)
from dualform.experiments.stats import paired_difference, proportion_ci
from dualform.viz.momentum import markdown_table

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("momentum")
    config = replace(MomentumConfig.tiny(), seeds=(0, 1, 2))
    return out, config, run_momentum(out, config=config, progress=False)


def test_tiny_run_writes_paired_differences_with_intervals(tiny_run):
    out, config, results = tiny_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["paper"] == json.loads(json.dumps(PAPER))
    assert saved["paper"]["icl_accuracy"]["momentum"] < 1  # accuracy as a fraction everywhere
    runs = {(r["variant"], r["seed"]): r for r in saved["runs"]}
    seeds = list(config.seeds)
    deltas = saved["paired"]["all_seeds"]
    assert deltas["seeds"] == seeds
    for ctx in ("16", "32"):
        expected = paired_difference([runs["momentum", s]["perplexity"][ctx] for s in seeds],
                                     [runs["vanilla", s]["perplexity"][ctx] for s in seeds])
        assert deltas["perplexity"][ctx] == pytest.approx(expected.to_json())
        interval = deltas["perplexity"][ctx]
        assert interval["low"] <= interval["mean"] <= interval["high"] and interval["n"] == 3
    per_seed = [runs["momentum", s]["icl_mean"] - runs["vanilla", s]["icl_mean"] for s in seeds]
    assert deltas["icl_mean"]["mean"] == pytest.approx(sum(per_seed) / len(per_seed))
    assert deltas["icl_mean"]["n"] == 3 * config.n_icl_prompts * len(config.icl_demos)
    for arm in ("vanilla", "momentum"):
        table = saved["summary"][arm]
        assert all(0.0 <= a <= 1.0 for r in saved["runs"] for a in r["icl_accuracy"].values())
        assert table["failure"]["n"] == 3
        assert table["failure"]["failed"] == sum(
            runs[arm, s]["icl_mean"] < saved["learned_threshold"]["icl_mean"] for s in seeds
        )
    assert saved["learned_threshold"]["chance"] == 1 / config.n_values
    assert isinstance(saved["verdict"]["reproduces_paper_direction"], bool)
    assert saved["cost"]["runs"] == len(saved["runs"]) == 7  # 3 × 2 twins + 1 extra sweep η
    for run in saved["runs"]:
        assert run["final_loss"] < run["initial_loss"]  # training makes progress
    assert {"paired_differences", "perplexity_vs_context"} <= set(saved["figures"])
    assert (out / "paired_differences.html").exists()
    assert markdown_table(saved).count("\n") == 6  # header, rule, 2 arms, 2 differences, paper


def test_saved_runs_are_reused_only_with_the_same_settings(tiny_run, tmp_path):
    out, config, results = tiny_run
    assert len(list((out / "runs").glob("*.json"))) == 7
    resumed = tmp_path / "resumed"
    (resumed / "runs").mkdir(parents=True)
    for path in (out / "runs").glob("*.json"):
        saved = json.loads(path.read_text())
        if path.name == "eta0-seed1.json":  # a marked vanilla run: the rerun must read it back
            saved["record"]["perplexity"]["16"] += 3.0
        (resumed / "runs" / path.name).write_text(json.dumps(saved))
    again = run_momentum(resumed, config=config, progress=False)
    before, after = (r["summary"]["vanilla"]["perplexity"]["16"]["mean"] for r in (results, again))
    assert after == pytest.approx(before + 1.0)  # +3 on one of 3 seeds
    retrained = run_momentum(resumed, config=replace(config, lr=config.lr / 2), progress=False)
    assert retrained["summary"]["vanilla"]["perplexity"]["16"]["mean"] != pytest.approx(after)


def test_saved_runs_of_other_code_are_not_reused(tiny_run, monkeypatch):
    out, config, _ = tiny_run
    job = Job("vanilla", 0.0, seed=0)
    assert load_run(config, job, str(out)) is not None
    monkeypatch.setattr(experiment, "code_fingerprint", lambda: "edited code")
    assert load_run(config, job, str(out)) is None


def run(seed: int, variant: str, icl: float, ppl: float = 4.0) -> dict:
    return {"seed": seed, "variant": variant, "eta": 0.0 if variant == "vanilla" else 0.1,
            "icl_mean": icl, "icl_accuracy": {"2": icl}, "icl_correct": {"2": [icl >= 0.5] * 4},
            "perplexity": {"64": ppl}, "final_loss": 1.0, "losses": [2.0, 1.0],
            "learned_etas": None}


def test_failure_rate_counts_twins_below_the_learned_threshold():
    threshold = learned_threshold(1 / 8)
    assert threshold == pytest.approx(0.5625)  # halfway between chance and perfect
    runs = [run(0, "vanilla", 1.0), run(1, "vanilla", 0.13), run(2, "vanilla", 0.5625)]
    assert [learned(r, threshold) for r in runs] == [True, False, True]
    rate = failure_rate(runs, threshold)
    assert rate["failed"] == 1 and rate["seeds"] == [1]
    assert rate == {"failed": 1, "seeds": [1], **proportion_ci(1, 3).to_json()}
    assert rate["low"] < 1 / 3 < rate["high"]
    wilson = proportion_ci(3, 10)  # textbook Wilson score interval: [0.1078, 0.6032]
    assert (wilson.low, wilson.high) == pytest.approx((0.10779, 0.60322), abs=1e-5)
    assert proportion_ci(0, 8).low == 0.0 < proportion_ci(0, 8).high  # not degenerate at 0/n


def test_both_learned_subset_and_verdict():
    config = replace(MomentumConfig.tiny(), seeds=(0, 1, 2), context_lengths=(64,))
    records = [
        run(0, "vanilla", 1.0, 4.0), run(0, "momentum", 1.0, 3.9),
        run(1, "vanilla", 1.0, 4.1), run(1, "momentum", 0.125, 6.8),  # momentum failed
        run(2, "vanilla", 0.125, 6.9), run(2, "momentum", 1.0, 3.8),  # vanilla failed
    ]
    out = summarise(config, records, PAPER, chance=0.125)
    assert out["summary"]["vanilla"]["failure"]["seeds"] == [2]
    assert out["summary"]["momentum"]["failure"]["seeds"] == [1]
    assert out["paired"]["both_learned"]["seeds"] == [0]
    assert out["paired"]["both_learned"]["perplexity"]["64"]["mean"] == pytest.approx(-0.1)
    assert out["paired"]["failure"]["mean"] == 0.0
    assert out["verdict"]["n_both_learned"] == 1
    assert not out["verdict"]["reproduces_paper_direction"]
    assert "icl_correct" not in out["runs"][0] and "losses" not in out["runs"][0]
    with pytest.raises(ValueError, match="both twins"):
        pair_runs(records[:-1])


def test_direction_reads_the_interval():
    assert direction({"low": -0.3, "high": -0.1}, better_if_negative=True) == "momentum better"
    assert direction({"low": 0.1, "high": 0.3}, better_if_negative=True) == "vanilla better"
    assert direction({"low": -0.1, "high": 0.3}, better_if_negative=False) == "no difference"
    assert direction({"low": 0.1, "high": 0.3}, better_if_negative=False) == "momentum better"
    assert direction(None, better_if_negative=True) == "no pairs"


def test_cli_refuses_a_single_seed():
    from typer.testing import CliRunner

    from dualform.cli import app

    result = CliRunner().invoke(app, ["reproduce", "momentum", "--seeds", "1"])
    assert result.exit_code == 2 and "--seeds" in result.output
