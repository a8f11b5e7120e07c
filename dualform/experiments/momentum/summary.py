"""Aggregation, verdict and figures for :func:`dualform.experiments.momentum.experiment.run_momentum`."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path


def mean_std(values: list[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` with the sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


LEARNED_ICL = 0.8  # a model "learned the in-context task" at this mean ICL accuracy


def summarise(config, records: list[dict], paper: dict) -> dict:
    """Mean ± std over seeds per variant, paired momentum − vanilla deltas, η sweep, verdict."""
    ctxs = [str(c) for c in config.context_lengths]
    by = {
        v: sorted((r for r in records if r["variant"] == v), key=lambda r: r["seed"])
        for v in ("vanilla", "momentum")
    }
    table = {variant: _variant_table(rows, ctxs) for variant, rows in by.items()}
    pairs = list(zip(by["vanilla"], by["momentum"], strict=True))
    both = [(v, m) for v, m in pairs if min(v["icl_mean"], m["icl_mean"]) >= LEARNED_ICL]
    return {
        "config": asdict(config),
        "summary": table,
        "delta_momentum_minus_vanilla": _deltas(pairs, ctxs),
        "delta_where_both_learned_icl": {
            "threshold": LEARNED_ICL, "seeds": [v["seed"] for v, _ in both],
            **(_deltas(both, ctxs) if both else {}),
        },
        "eta_sweep": eta_sweep(records, config),
        "learned_eta": next(
            (r["learned_etas"] for r in records if r["variant"] == "learned"), None
        ),
        "paper": paper,
        "verdict": verdict(pairs, both, ctxs),
        "runs": [
            {**{k: v for k, v in r.items() if k != "losses"}, "loss_curve": r["losses"][::10]}
            for r in records
        ],
    }


def _variant_table(rows: list[dict], ctxs: list[str]) -> dict:
    return {
        "perplexity": {c: mean_std([r["perplexity"][c] for r in rows]) for c in ctxs},
        "icl_mean": mean_std([r["icl_mean"] for r in rows]),
        "icl_accuracy": {
            d: mean_std([r["icl_accuracy"][d] for r in rows]) for d in rows[0]["icl_accuracy"]
        },
        "final_loss": mean_std([r["final_loss"] for r in rows]),
    }


def _deltas(pairs: list[tuple[dict, dict]], ctxs: list[str]) -> dict:
    """Paired (same seed) momentum − vanilla differences, mean ± std."""
    return {
        "perplexity": {
            c: mean_std([m["perplexity"][c] - v["perplexity"][c] for v, m in pairs]) for c in ctxs
        },
        "icl_mean": mean_std([m["icl_mean"] - v["icl_mean"] for v, m in pairs]),
    }


def eta_sweep(records: list[dict], config) -> list[dict]:
    """Perplexity (longest context) and mean ICL accuracy per η at the first seed."""
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


def tally(diffs: list[float], better_if_negative: bool) -> dict[str, int]:
    """How many paired differences favour momentum, tie (|d| < 1e-12), or favour vanilla."""
    sign = -1.0 if better_if_negative else 1.0
    better = sum(sign * d > 1e-12 for d in diffs)
    equal = sum(abs(d) <= 1e-12 for d in diffs)
    return {"momentum_better": better, "equal": equal, "vanilla_better": len(diffs) - better - equal}


def verdict(pairs: list[tuple[dict, dict]], both: list[tuple[dict, dict]], ctxs: list[str]) -> dict:
    """Seed-by-seed comparison, overall and where both twins learned the in-context task."""
    n = len(pairs)
    ppl = {
        c: tally([m["perplexity"][c] - v["perplexity"][c] for v, m in pairs], True) for c in ctxs
    }
    icl = tally([m["icl_mean"] - v["icl_mean"] for v, m in pairs], False)
    ppl_all = all(t["momentum_better"] == n for t in ppl.values())
    reproduced = ppl_all and icl["momentum_better"] > n / 2
    ppl_text = "; ".join(
        f"ctx {c}: momentum lower in {t['momentum_better']}/{n}" for c, t in ppl.items()
    )
    icl_text = (
        f"ICL accuracy: momentum higher in {icl['momentum_better']}/{n}, equal in "
        f"{icl['equal']}/{n}, lower in {icl['vanilla_better']}/{n} seeds"
    )
    text = (
        ("Reproduces" if reproduced else "Does not reproduce")
        + f" the paper's direction at this scale (seed by seed). Perplexity: {ppl_text}. "
        + icl_text + ". " + _both_text(both, n, ctxs)
        + " The paper's gains are small (−0.12…−0.14 perplexity, +2.8 ICL points, 350M models)."
    )
    return {
        "perplexity": ppl, "icl": icl, "both_learned_icl": len(both),
        "reproduces_paper_direction": reproduced, "text": text,
    }


def _both_text(both: list[tuple[dict, dict]], n: int, ctxs: list[str]) -> str:
    if not both:
        return f"In no seed did both twins learn the in-context task (ICL ≥ {LEARNED_ICL})."
    deltas = [
        f"ctx {c}: {mean_std([m['perplexity'][c] - v['perplexity'][c] for v, m in both])['mean']:+.4f}"
        for c in ctxs
    ]
    return (
        f"In the {len(both)}/{n} seeds where both twins learned the in-context task "
        f"(ICL ≥ {LEARNED_ICL}), momentum − vanilla perplexity is {', '.join(deltas)}."
    )


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average ``s_t = mean(x_{t−w+1..t})``."""
    out, total = [], 0.0
    for i, x in enumerate(values):
        total += x
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def sweep_figure(sweep: list[dict]):
    """ICL accuracy and perplexity (every context) against η, first seed."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean ICL accuracy", "test perplexity"))
    etas = [row["eta"] for row in sweep]
    fig.add_trace(go.Scatter(x=etas, y=[row["icl_mean"] for row in sweep], mode="lines+markers",
                             name="ICL accuracy"), row=1, col=1)
    for ctx in sweep[0]["perplexity"]:
        fig.add_trace(go.Scatter(x=etas, y=[row["perplexity"][ctx] for row in sweep],
                                 mode="lines+markers", name=f"perplexity @ {ctx}"), row=1, col=2)
    fig.update_xaxes(title_text="η (0 = vanilla)")
    fig.update_layout(title="η sweep (first seed)")
    return fig


def write_figures(out: Path, records: list[dict], results: dict, png: bool = True) -> dict:
    """Loss curves and perplexity/η figures as HTML (and PNG when kaleido can render)."""
    import plotly.graph_objects as go

    written: dict = {"html": [], "png": [], "png_error": None}
    curves = go.Figure()
    for r in records:
        label = f"{r['variant']} η={r['eta']:g} seed {r['seed']}"
        dash = "solid" if r["variant"] == "momentum" else "dot"
        window = max(1, len(r["losses"]) // 50)
        curves.add_trace(go.Scatter(y=smooth(r["losses"], window), name=label, line={"dash": dash}))
    curves.update_layout(title="Training loss (moving average)", xaxis_title="step",
                         yaxis_title="cross-entropy (nats)")
    eta_fig = sweep_figure(results["eta_sweep"])
    for name, fig in (("loss_curves", curves), ("eta_sweep", eta_fig)):
        html = out / f"{name}.html"
        fig.write_html(html)
        written["html"].append(html.name)
        if not png:
            written["png_error"] = "PNG export switched off (write_png=False)"
            continue
        try:
            fig.write_image(out / f"{name}.png")
            written["png"].append(f"{name}.png")
        except Exception as err:  # noqa: BLE001 — kaleido needs Chrome; keep the HTML
            written["png_error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
    return written
