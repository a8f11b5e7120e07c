"""Aggregation and verdict for :func:`dualform.experiments.momentum.experiment.run_momentum`.

The unit of replication is the seed: the vanilla and the momentum twin of one seed share their
initial weights and their data stream, so the paper's claim is tested on paired differences
``momentum − vanilla`` (same seed) with 95 % bootstrap intervals (:mod:`dualform.experiments.stats`):

* perplexity per context length — one difference per seed, resampled over seeds;
* ICL accuracy — one difference per seed *and* test prompt (the prompts are the same for both
  twins), resampled over seeds, then prompts within each seed.

A twin *failed* when it did not learn the in-context task: mean ICL accuracy below
:func:`learned_threshold` (halfway between chance and 1; a twin that never leaves the loss
plateau sits at chance). Failure rates per arm carry Wilson intervals, and the paired
differences are reported again over the seeds where both twins learned.
"""

from __future__ import annotations

from dataclasses import asdict

from dualform.experiments.stats import (
    bootstrap_ci,
    mean_std,
    paired_difference,
    proportion_ci,
)

ARMS = ("vanilla", "momentum")


def learned_threshold(chance: float) -> float:
    """ICL accuracy halfway between chance and perfect: ``(chance + 1) / 2``."""
    return (chance + 1.0) / 2.0


def learned(run: dict, threshold: float) -> bool:
    """The twin learned the in-context task (mean ICL accuracy ≥ ``threshold``)."""
    return run["icl_mean"] >= threshold


def failure_rate(runs: list[dict], threshold: float) -> dict:
    """Share of runs that did not learn the in-context task, with its Wilson interval."""
    failed = [r["seed"] for r in runs if not learned(r, threshold)]
    return {"failed": len(failed), "seeds": failed, **proportion_ci(len(failed), len(runs)).to_json()}


def pair_runs(records: list[dict]) -> list[tuple[dict, dict]]:
    """``(vanilla, momentum)`` twins of every seed, in seed order."""
    by = {arm: {r["seed"]: r for r in records if r["variant"] == arm} for arm in ARMS}
    if set(by["vanilla"]) != set(by["momentum"]):
        raise ValueError(
            f"momentum summary needs both twins at every seed; vanilla seeds {sorted(by['vanilla'])}, "
            f"momentum seeds {sorted(by['momentum'])}"
        )
    return [(by["vanilla"][s], by["momentum"][s]) for s in sorted(by["vanilla"])]


def with_interval(values: list[float]) -> dict:
    """Mean, sample std, n and the 95 % bootstrap interval of the mean (over seeds)."""
    return {**mean_std(values), "ci": bootstrap_ci(values).to_json()}


def arm_table(runs: list[dict], ctxs: list[str], threshold: float) -> dict:
    """Per arm: perplexity per context, ICL accuracy (mean and per demo count), failures."""
    return {
        "perplexity": {c: with_interval([r["perplexity"][c] for r in runs]) for c in ctxs},
        "icl_mean": with_interval([r["icl_mean"] for r in runs]),
        "icl_accuracy": {
            d: with_interval([r["icl_accuracy"][d] for r in runs]) for d in runs[0]["icl_accuracy"]
        },
        "final_loss": mean_std([r["final_loss"] for r in runs]),
        "failure": failure_rate(runs, threshold),
    }


def icl_per_prompt(run: dict) -> list[float]:
    """1/0 per test prompt, all demonstration counts in a row (same order in both twins)."""
    return [float(x) for d in run["icl_accuracy"] for x in run["icl_correct"][d]]


def paired_deltas(pairs: list[tuple[dict, dict]], ctxs: list[str]) -> dict:
    """Paired ``momentum − vanilla`` differences with 95 % intervals; ``{}`` without pairs."""
    if not pairs:
        return {"seeds": []}
    vanilla, momentum = [v for v, _ in pairs], [m for _, m in pairs]
    return {
        "seeds": [v["seed"] for v in vanilla],
        "perplexity": {
            c: paired_difference([m["perplexity"][c] for m in momentum],
                                 [v["perplexity"][c] for v in vanilla]).to_json()
            for c in ctxs
        },
        "icl_mean": paired_difference([icl_per_prompt(m) for m in momentum],
                                      [icl_per_prompt(v) for v in vanilla]).to_json(),
    }


def summarise(config, records: list[dict], paper: dict, chance: float) -> dict:
    """Per-arm table, failure rates, paired differences (all seeds / both learned), verdict."""
    ctxs = [str(c) for c in config.context_lengths]
    threshold = learned_threshold(chance)
    pairs = pair_runs(records)
    arms = {arm: [p[i] for p in pairs] for i, arm in enumerate(ARMS)}
    both = [(v, m) for v, m in pairs if learned(v, threshold) and learned(m, threshold)]
    failed = {arm: [float(not learned(r, threshold)) for r in runs] for arm, runs in arms.items()}
    paired = {
        "all_seeds": paired_deltas(pairs, ctxs),
        "both_learned": paired_deltas(both, ctxs),
        "failure": paired_difference(failed["momentum"], failed["vanilla"]).to_json(),
    }
    return {
        "config": asdict(config),
        "learned_threshold": {"icl_mean": threshold, "chance": chance},
        "summary": {arm: arm_table(runs, ctxs, threshold) for arm, runs in arms.items()},
        "paired": paired,
        "eta_sweep": eta_sweep(records, config),
        "learned_eta": next(
            (r["learned_etas"] for r in records if r["variant"] == "learned"), None
        ),
        "paper": paper,
        "verdict": verdict(paired, len(pairs), ctxs),
        "runs": [
            {**{k: v for k, v in r.items() if k not in ("losses", "icl_correct")},
             "loss_curve": r["losses"][::10]}
            for r in records
        ],
    }


def eta_sweep(records: list[dict], config) -> list[dict]:
    """Perplexity (every context) and mean ICL accuracy per η at the first seed."""
    seed, longest = config.seeds[0], str(config.context_lengths[-1])
    rows = [r for r in records if r["seed"] == seed and r["variant"] != "learned"]
    return sorted(
        (
            {
                "eta": r["eta"], "perplexity": r["perplexity"], "icl_mean": r["icl_mean"],
                f"perplexity_at_{longest}": r["perplexity"][longest],
            }
            for r in rows
        ),
        key=lambda row: row["eta"],
    )


def direction(interval: dict | None, better_if_negative: bool) -> str:
    """``"momentum better"``/``"vanilla better"`` when the interval excludes 0, else ``"no difference"``."""
    if interval is None:
        return "no pairs"
    low, high = interval["low"], interval["high"]
    if (high < 0) if better_if_negative else (low > 0):
        return "momentum better"
    if (low > 0) if better_if_negative else (high < 0):
        return "vanilla better"
    return "no difference"


def verdict(paired: dict, n_pairs: int, ctxs: list[str]) -> dict:
    """The paper's two claims judged by the paired 95 % intervals, all seeds and both-learned."""
    out: dict = {"n_pairs": n_pairs, "n_both_learned": len(paired["both_learned"]["seeds"])}
    for subset in ("all_seeds", "both_learned"):
        deltas = paired[subset]
        out[subset] = {
            "perplexity": {
                c: direction(deltas.get("perplexity", {}).get(c), True) for c in ctxs
            },
            "icl_mean": direction(deltas.get("icl_mean"), False),
        }
    claims = out["all_seeds"]
    out["reproduces_paper_direction"] = (
        all(d == "momentum better" for d in claims["perplexity"].values())
        and claims["icl_mean"] == "momentum better"
    )
    out["text"] = verdict_text(paired, out, n_pairs, ctxs)
    return out


def verdict_text(paired: dict, out: dict, n_pairs: int, ctxs: list[str]) -> str:
    """One paragraph: the paired differences with intervals and what they say about the claims."""
    def fmt(interval: dict) -> str:
        return f"{interval['mean']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"

    parts = [
        ("Reproduces" if out["reproduces_paper_direction"] else "Does not reproduce")
        + f" the paper's direction at this scale ({n_pairs} paired seeds, 95 % intervals)."
    ]
    for subset, label in (("all_seeds", "all seeds"), ("both_learned", "seeds where both learned")):
        deltas = paired[subset]
        if not deltas["seeds"]:
            parts.append("No seed where both twins learned the in-context task.")
            continue
        ppl = ", ".join(f"ctx {c} {fmt(deltas['perplexity'][c])}" for c in ctxs)
        parts.append(
            f"Momentum − vanilla over {label} (n = {len(deltas['seeds'])}): perplexity {ppl}; "
            f"ICL accuracy {fmt(deltas['icl_mean'])}."
        )
    parts.append(f"Failure rate, momentum − vanilla: {fmt(paired['failure'])}.")
    parts.append("The paper's gains are small (−0.12…−0.14 perplexity, +0.028 ICL accuracy, "
                 "350M models).")
    return " ".join(parts)
