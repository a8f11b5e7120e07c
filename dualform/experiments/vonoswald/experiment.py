"""End-to-end reproduction of von Oswald et al. (2023) on in-context linear regression.

``run_regression(out_dir)`` tunes GD and GD++, trains 1-, 2- and 5-layer LSA Transformers,
compares them (loss, preds diff, model cos/diff, OOD), runs the dual-form bridge, writes
``results.json`` (atomically) and the figures (HTML, plus PNG when kaleido can export), and
returns the results dict. ``RegressionConfig()`` is sized for a 2-core CPU;
``RegressionConfig.gpu()`` is the larger, paper-like setting.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dualform.errors import InvalidArgumentError
from dualform.experiments.vonoswald.baselines import gd_loss, gdpp_loss, tune_gd_eta, tune_gdpp
from dualform.experiments.vonoswald.data import RegressionBatch, half_mse, sample_tasks
from dualform.experiments.vonoswald.dual import bridge_summary, dual_form_bridge
from dualform.experiments.vonoswald.gd import constructed_lsa, gd_predict
from dualform.experiments.vonoswald.metrics import (
    compare_to_gd,
    gd_predictor,
    gdpp_predictor,
    ood_losses,
)
from dualform.experiments.vonoswald.summary import (
    PAPER,
    check_targets,
    make_figures,
    summary_table,
)
from dualform.experiments.vonoswald.train import TrainConfig, TrainResult, train_lsa
from dualform.infra.io import write_json_atomic


@dataclass
class RegressionConfig:
    """Experiment settings; the defaults finish in a few minutes on a 2-core CPU."""

    d: int = 10
    n: int = 10
    x_range: float = 0.5
    layers: tuple[int, ...] = (1, 2, 5)
    train_steps: tuple[int, ...] = (2000, 4000, 4000)  # one entry per element of ``layers``
    batch_size: int = 2048  # official 2048; smaller batches stall 1-layer LSA on a plateau
    lr: float = 1e-3
    deep_lr: float = 5e-4  # official notebook: lr 5e-4 and activation clip 10 above 3 layers
    deep_activation_clip: float = 10.0
    grad_clip: float = 10.0
    eval_batch: int = 10000
    tune_batch: int = 10000
    gd_grid: int = 100
    gdpp_train_steps: int = 500
    gdpp_batch: int = 1024
    ood_alphas: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    ood_batch: int = 5000
    paper_range_check: bool = True  # also line-search 1-step GD on x ~ U(−1, 1)
    softmax_variant: bool = False  # also train a softmax-attention + MLP model
    softmax_layers: int = 1
    softmax_steps: int = 2000
    seed: int = 0
    device: str = "cpu"
    # Intra-op threads while the experiment runs (restored afterwards; None: leave as is). The
    # tensors are tiny: a second thread gains ~25 % on an idle 2-core CPU, but when the cores
    # are shared every op waits on a descheduled thread (measured: up to 40× slower).
    num_threads: int | None = 1
    png: bool = True

    def __post_init__(self) -> None:
        if 1 not in self.layers or len(self.train_steps) != len(self.layers):
            raise InvalidArgumentError("layers must include 1 and match train_steps one to one")

    @classmethod
    def gpu(cls, device: str = "cuda") -> RegressionConfig:
        """Paper-sized run for one GPU (official steps: 5k one-layer, 50k multi-layer)."""
        return cls(
            train_steps=(5000, 20000, 50000),
            batch_size=2048,
            gdpp_train_steps=3000,
            ood_alphas=tuple(round(0.5 + 0.1 * i, 2) for i in range(16)),
            ood_batch=10000,
            softmax_variant=True,
            softmax_steps=10000,
            num_threads=None,
            device=device,
        )


def _test_batch(cfg: RegressionConfig, seed_offset: int, size: int) -> RegressionBatch:
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    return sample_tasks(
        size,
        cfg.n,
        cfg.d,
        x_range=cfg.x_range,
        generator=gen,
        dtype=torch.float64,
        device=cfg.device,
    )


def run_baselines(cfg: RegressionConfig, tune: RegressionBatch, test: RegressionBatch) -> dict:
    """Tune GD's η and GD++'s (η_l, γ_l) for every depth; test losses on ``test``."""
    gd, gdpp = {}, {}
    for k in cfg.layers:
        t = tune_gd_eta(tune, k, grid=cfg.gd_grid)
        gd[k] = {"eta": t.eta, "tune_loss": t.tune_loss, "test_loss": gd_loss(test, t.eta, k)}
        p = tune_gdpp(
            tune,
            k,
            t.eta,
            train_steps=cfg.gdpp_train_steps,
            batch_size=cfg.gdpp_batch,
            x_range=cfg.x_range,
            seed=cfg.seed + 7,
        )
        with torch.no_grad():
            gdpp[k] = {
                "etas": p.etas,
                "gammas": p.gammas,
                "tune_loss": p.tune_loss,
                "test_loss": gdpp_loss(test, p.etas, p.gammas).item(),
            }
    return {"gd": gd, "gdpp": gdpp}


def paper_range_check(cfg: RegressionConfig) -> dict:
    """1-step GD line search with the paper's ``x ~ U(−1, 1)``."""
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    tune, test = (
        sample_tasks(
            cfg.tune_batch,
            cfg.n,
            cfg.d,
            x_range=1.0,
            generator=gen,
            dtype=torch.float64,
            device=cfg.device,
        )
        for _ in range(2)
    )
    t = tune_gd_eta(tune, 1, grid=cfg.gd_grid)
    return {"x_range": 1.0, "eta": t.eta, "test_loss": gd_loss(test, t.eta, 1)}


def train_all(cfg: RegressionConfig, progress: bool) -> dict[int, TrainResult]:
    """Train one LSA per depth in ``cfg.layers``."""
    runs = {}
    for layers, steps in zip(cfg.layers, cfg.train_steps, strict=True):
        tc = TrainConfig(
            n_layers=layers,
            steps=steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr if layers <= 3 else cfg.deep_lr,
            grad_clip=cfg.grad_clip,
            activation_clip=0.0 if layers <= 3 else cfg.deep_activation_clip,
            d=cfg.d,
            n=cfg.n,
            x_range=cfg.x_range,
            seed=cfg.seed,
            device=cfg.device,
        )
        runs[layers] = train_lsa(tc, progress=progress)
    return runs


def evaluate_models(runs: dict[int, TrainResult], base: dict, test: RegressionBatch) -> dict:
    """Loss and alignment of every trained LSA with K-step GD and with GD++ (float64)."""
    out = {}
    for k, run in runs.items():
        model = copy.deepcopy(run.model).double()
        vs_gd = compare_to_gd(model, test, base["gd"][k]["eta"], k)
        g = base["gdpp"][k]
        with torch.no_grad():
            pred_pp = gdpp_predictor(g["etas"], g["gammas"])(test.tokens())
            pred_tf = model.predict(test.tokens())
        out[k] = {
            "test_loss": vs_gd.pop("loss_tf"),
            "train_seconds": run.seconds,
            "final_train_loss": run.log_losses[-1],
            "vs_gd": vs_gd,
            "preds_diff_vs_gdpp": (pred_tf - pred_pp).abs().mean().item(),
        }
    return out


def run_ood(cfg: RegressionConfig, runs: dict[int, TrainResult], base: dict) -> dict:
    """OOD loss curves (input range scaled by α) for each LSA and its K-step GD."""
    predictors = {}
    for k, run in runs.items():
        predictors[f"LSA {k}L"] = copy.deepcopy(run.model).double().predict
        predictors[f"GD {k} step"] = gd_predictor(base["gd"][k]["eta"], k)
    curves = ood_losses(
        predictors,
        cfg.ood_alphas,
        n=cfg.n,
        d=cfg.d,
        x_range=cfg.x_range,
        batch_size=cfg.ood_batch,
        seed=cfg.seed + 11,
        dtype=torch.float64,
        device=cfg.device,
    )
    return {"alphas": list(cfg.ood_alphas), "curves": curves}


def run_bridge(
    runs: dict[int, TrainResult], base: dict, test: RegressionBatch
) -> tuple[dict, dict, dict, torch.Tensor]:
    """Dual-form bridge on the trained 1-layer LSA and on the 1-step GD construction."""
    small = RegressionBatch(*(t[:256] for t in (test.x, test.y, test.x_test, test.y_test, test.w)))
    eta = base["gd"][1]["eta"]
    trained = dual_form_bridge(copy.deepcopy(runs[1].model).double(), small)
    built = dual_form_bridge(
        constructed_lsa(small.d, small.n, [eta]).to(small.x.device), small, eta=eta
    )
    _, gd_model = gd_predict(small.x, small.y, small.x_test, eta, 1)
    return (
        bridge_summary(trained),
        bridge_summary(built),
        {"trained": trained, "built": built},
        gd_model,
    )


def run_regression(
    out_dir: str | Path, *, config: RegressionConfig | None = None, progress: bool = True
) -> dict:
    """Run the whole experiment, write ``results.json`` + figures into ``out_dir``, return results."""
    cfg = config or RegressionConfig()
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg, Path(out_dir), progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: RegressionConfig, out_dir: Path, progress: bool) -> dict:
    """The experiment proper (see :func:`run_regression`)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out_dir.mkdir(parents=True, exist_ok=True)
    tune, test = _test_batch(cfg, 1000, cfg.tune_batch), _test_batch(cfg, 2000, cfg.eval_batch)
    base = run_baselines(cfg, tune, test)
    paper_range = paper_range_check(cfg) if cfg.paper_range_check else None
    runs = train_all(cfg, progress)
    lsa = evaluate_models(runs, base, test)
    ood = run_ood(cfg, runs, base)
    bridge_trained, bridge_built, bridge_raw, gd_model = run_bridge(runs, base, test)
    table = summary_table(cfg.layers, base, lsa)
    results = {
        "config": asdict(cfg),
        "paper": PAPER,
        "table": table,
        "gd": base["gd"],
        "gdpp": base["gdpp"],
        "gd_paper_x_range": paper_range,
        "lsa": lsa,
        "ood": ood,
        "dual_form": {"trained_1layer": bridge_trained, "gd_construction_1step": bridge_built},
        "targets": check_targets(base, lsa, paper_range),
    }
    if cfg.softmax_variant:
        results["softmax_mlp"] = softmax_variant(cfg, test, progress)
    results["figures"] = make_figures(cfg, out_dir, table, runs, base, ood, bridge_raw, gd_model)
    results["png_export"] = next(
        (f["png_error"] for f in results["figures"].values() if "png_error" in f), "ok"
    )
    results["wall_seconds"] = time.perf_counter() - start
    results["cpu_seconds"] = time.process_time() - cpu_start
    results["torch_threads"] = torch.get_num_threads()
    write_json_atomic(out_dir / "results.json", results)
    return results


def softmax_variant(cfg: RegressionConfig, test: RegressionBatch, progress: bool) -> dict:
    """Train the softmax-attention + MLP variant and report its test loss."""
    tc = TrainConfig(
        n_layers=cfg.softmax_layers,
        steps=cfg.softmax_steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        grad_clip=cfg.grad_clip,
        d=cfg.d,
        n=cfg.n,
        x_range=cfg.x_range,
        attn="softmax",
        mlp=True,
        seed=cfg.seed,
        device=cfg.device,
    )
    run = train_lsa(tc, progress=progress)
    model = copy.deepcopy(run.model).double()
    with torch.no_grad():
        loss = half_mse(model.predict(test.tokens()), test.y_test).item()
    return {"layers": cfg.softmax_layers, "test_loss": loss, "train_seconds": run.seconds}
