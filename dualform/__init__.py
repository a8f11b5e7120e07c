"""dualform — in-context learning as implicit finetuning, head by head, on TransformerLens models.

The package reads as its architecture; data flows one way, core → experiments → views::

    probes.py       hook capture on any TransformerLens model (standalone: torch + TL only)
    errors.py       DualformError (expected failures: one message, exit 2) and argument checks
    core/           the papers' math: equations, dual form, relaxed attention, momentum, K/V
                    finetuning, attribution, metrics (torch + TransformerLens, no I/O, no plots)
    models/         loading the embedded / tiny / Hugging Face models; compatibility shims
    tasks/          labelled tasks, templates, prompts with exact demonstration spans
    experiments/    dai (ICL vs finetuning), momentum, vonoswald (LSA ≡ GD), walkthrough
    viz/            figures, tables, the HTML report — they only read results
    infra/          atomic I/O, executors, benchmarks
    cli.py          the ``dualform`` command
    cli_options.py  its error path and shared options (no torch: ``--help`` stays fast)

The top-level names below are imported lazily, so ``import dualform.probes`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module, grouped as the package is.
_API = {
    # core
    "capture": "dualform.probes",
    "hooks": "dualform.probes",
    "Capture": "dualform.probes",
    "dual_form": "dualform.core.dual_form",
    "DualForm": "dualform.core.dual_form",
    "softmax_decomposition": "dualform.core.dual_form",
    "relaxed_linear_attention": "dualform.core.relaxed",
    "momentum_attention": "dualform.core.momentum",
    "finetune_kv": "dualform.core.finetune",
    "icl_head_effects": "dualform.core.attribution",
    "ft_head_effects": "dualform.core.attribution",
    # models
    "load_model": "dualform.models.load",
    # tasks
    "load_task": "dualform.tasks.prompts",
    "load_user_task": "dualform.tasks.prompts",
    "sample_demos": "dualform.tasks.prompts",
    "build_prompt": "dualform.tasks.prompts",
    "prompt_tokens": "dualform.tasks.prompts",
    # experiments
    "DaiConfig": "dualform.experiments.dai.config",
    "run_dai": "dualform.experiments.dai.protocol",
    "run_sweep": "dualform.experiments.dai.sweep",
    "run_momentum": "dualform.experiments.momentum.experiment",
    "run_regression": "dualform.experiments.vonoswald.experiment",
    # views
    "figures_from_results": "dualform.viz.figures",
    "write_report": "dualform.viz.report",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dualform' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

