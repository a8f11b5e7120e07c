"""How reproducible is Dai's K/V finetuning baseline? Float rounding vs the FT trajectory.

On the embedded model and the first default task (32 demonstrations, seed 1), runs
``finetune_kv`` at one learning rate several ways that are the same computation up to float
rounding — float32, the rate perturbed by 1e-6 (relative), the LR grid batched
(``finetune_kv_grid``), float64 — and prints, per step, the loss of each, then how far each run's
ΔW and its attention-output change on a test query are from the float32 run.

    python analyses/ft_sensitivity.py [--lr 0.005] [--task afinn-sentiment] [--out FILE.json]
"""

from __future__ import annotations

import argparse

import torch

from dualform import finetune_kv, load_model, load_task, sample_demos
from dualform.core.finetune_grid import finetune_kv_grid
from dualform.experiments.dai.conditions import demo_training_texts, prompt_pair, record
from dualform.infra.io import write_json_atomic
from dualform.tasks.prompts import label_token_ids


def _relative(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in b) ** 0.5
    return num / sum(float(b[k].double().norm() ** 2) for k in b) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--task", default="afinn-sentiment")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model = load_model()
    task = load_task(args.task, n_validation=12, n_test=24)
    demos = sample_demos(task, 32, 1)
    texts = demo_training_texts(model, task, demos)
    runs = {
        "float32": finetune_kv(model, texts, args.lr),
        "lr x (1+1e-6)": finetune_kv(model, texts, args.lr * (1 + 1e-6)),
        "LR grid (batched)": finetune_kv_grid(model, texts, [2 * args.lr, args.lr, args.lr / 5])[1],
        "float64": finetune_kv(load_model(dtype="float64"), texts, args.lr),
    }
    ref = runs["float32"]
    print(f"{args.task}, lr {args.lr}: loss per step")
    print("step  " + "  ".join(f"{name:>17}" for name in runs))
    for step in range(0, len(texts), 3):
        print(f"{step:4d}  " + "  ".join(f"{r.losses[step]:17.5f}" for r in runs.values()))

    labels = label_token_ids(model, task)
    query = prompt_pair(model, task, demos, task.test[0]).zsl.tokens
    h0 = record(model, query, labels).attn_out
    d_ref = record(ref.model, query, labels).attn_out - h0
    summary = {}
    for name, run in runs.items():
        d = record(run.model.float() if name == "float64" else run.model, query, labels).attn_out - h0
        cos = torch.nn.functional.cosine_similarity(d.double(), d_ref.double(), dim=-1)
        summary[name] = {"rel_delta_w_vs_float32": _relative(run.delta_w, ref.delta_w),
                         "final_loss": run.losses[-1],
                         "mean_cos_attn_change_vs_float32": float(cos.mean())}
    print("\nrun                   ‖ΔW − ΔW_f32‖/‖ΔW_f32‖   mean cos(Δh, Δh_f32) over layers")
    for name, row in summary.items():
        print(f"{name:20s}  {row['rel_delta_w_vs_float32']:22.3g}   {row['mean_cos_attn_change_vs_float32']:.3f}")
    if args.out:
        write_json_atomic(args.out, {"task": args.task, "lr": args.lr, "summary": summary,
                                     "losses": {k: r.losses for k, r in runs.items()}})


if __name__ == "__main__":
    main()
