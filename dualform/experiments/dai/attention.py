"""The attention example of a Dai run: one test query under ICL, ZSL and FT, recorded once.

:func:`attention_example` runs one query three ways and keeps the attention patterns
(``hook_pattern`` via :func:`dualform.probes.capture`):

* ICL — demonstrations + query on the pretrained model;
* ZSL — the query alone on the pretrained model;
* FT  — the query alone on the model finetuned (:func:`dualform.core.finetune.finetune_kv`) on
  the same demonstrations.

Only ICL has the demonstrations in its prompt; ZSL and FT see the query's own tokens (plus BOS).
:meth:`AttentionExample.aligned_last_row` puts all three on the ICL prompt's positions: ZSL/FT
values sit on the query tokens (and BOS), the demonstration span is empty for them — FT can only
reach the demonstrations through its weights.

:func:`record_attention` is what ``run_dai`` calls at the end of a run: for the first task with
a finetuned model it records the example and the singular values of ΔW_ICL vs ΔW_V / ΔW_K of
finetuning (:func:`head_spectra`) into ``attention_example.json`` beside ``results.json``, so
the views (:mod:`dualform.viz.report`, :mod:`dualform.viz.attention`) only read files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dualform.experiments.dai.results import DaiResults, Selection
from dualform.infra.io import as_stored, read_json, write_text_atomic
from dualform.infra.reprs import compact_repr

ATTENTION_NAME = "attention_example.json"
ATTENTION_VERSION = 3  # bump when the recorded example's content changes


@dataclass
class AttentionExample:
    """Last-token attention (all layers) and full patterns (one layer) of one query."""

    tokens: dict[str, list[str]]  # condition → its prompt's tokens
    last_row: dict[str, list]  # condition → [layer][head][k_pos] of the last query position
    full: dict[str, list]  # condition → [head][q_pos][k_pos] at ``view_layer``
    view_layer: int
    demo_start: int  # first demonstration position in the ICL prompt (1 with a BOS)
    n_demo_tokens: int
    meta: dict = field(default_factory=dict)

    __repr__ = compact_repr

    @property
    def demo_slice(self) -> slice:
        return slice(self.demo_start, self.demo_start + self.n_demo_tokens)

    def aligned_last_row(self, condition: str, layer: int) -> np.ndarray:
        """``[head, k_pos]`` on the ICL prompt's positions (NaN where the prompt has no token)."""
        row = np.asarray(self.last_row[condition], dtype=float)[layer]
        if condition == "icl":
            return row
        out = np.full((row.shape[0], len(self.tokens["icl"])), np.nan)
        out[:, : self.demo_start] = row[:, : self.demo_start]
        out[:, self.demo_slice.stop :] = row[:, self.demo_start :]
        return out

    def demo_mass(self) -> np.ndarray:
        """ICL attention mass of the last token on the demonstrations, ``[layer, head]``."""
        return np.asarray(self.last_row["icl"], dtype=float)[:, :, self.demo_slice].sum(-1)

    def ft_shift(self) -> np.ndarray:
        """Per layer, how far FT moved the last token's attention from ZSL (total variation,
        mean over heads); ``[layer]``."""
        ft, zsl = (np.asarray(self.last_row[c], dtype=float) for c in ("ft", "zsl"))
        return _total_variation(ft, zsl)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AttentionExample:
        return cls(**data)


def attention_example(model, task, demos, query, *, ft=None, lr: float | None = None,
                      layer: int | None = None, digits: int = 4) -> AttentionExample:
    """Run ``query`` under ICL (with ``demos``), ZSL and FT and keep the attention patterns.

    ``ft`` is a :class:`dualform.core.finetune.FinetuneResult`; without it, ``finetune_kv`` is run on
    ``demos`` with ``lr`` (no FT condition when both are ``None``). ``layer`` picks the layer of
    the full patterns; by default the layer where finetuning moved the last token's attention
    most (:meth:`AttentionExample.ft_shift`), or without FT the layer that puts the most ICL
    attention on the demonstrations.
    """
    from dualform.core.finetune import finetune_kv
    from dualform.experiments.dai.conditions import demo_training_texts, prompt_pair

    pair = prompt_pair(model, task, demos, query)
    if ft is None and lr is not None:
        ft = finetune_kv(model, demo_training_texts(model, task, demos), lr)
    runs = {"icl": (model, pair.icl.tokens), "zsl": (model, pair.zsl.tokens)}
    if ft is not None:
        runs["ft"] = (ft.model, pair.zsl.tokens)
    patterns = {c: _patterns(m, t) for c, (m, t) in runs.items()}  # [layer, head, q, k]
    demo = pair.demo_slice
    if layer is None:
        layer = _default_layer(patterns, demo)
    return AttentionExample(
        tokens={c: [str(s) for s in model.to_str_tokens(t[0])] for c, (_, t) in runs.items()},
        last_row={c: np.round(p[:, :, -1], digits).tolist() for c, p in patterns.items()},
        full={c: np.round(p[layer], digits).tolist() for c, p in patterns.items()},
        view_layer=layer, demo_start=pair.icl.demo_start, n_demo_tokens=pair.icl.n_demo_tokens,
        meta={"task": task.name, "n_demos": len(demos), "lr": None if ft is None else ft.lr},
    )


def _total_variation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``½ Σ_k |a − b|`` over key positions, mean over heads: ``[layer, head, k]`` → ``[layer]``."""
    return 0.5 * np.abs(a - b).sum(-1).mean(-1)


def _default_layer(patterns: dict[str, np.ndarray], demo: slice) -> int:
    if "ft" in patterns:
        return int(_total_variation(patterns["ft"][:, :, -1], patterns["zsl"][:, :, -1]).argmax())
    return int(patterns["icl"][:, :, -1, demo].sum(-1).mean(-1).argmax())


def _patterns(model, tokens) -> np.ndarray:
    from dualform.probes import capture

    cap = capture(model, tokens, hooks=("pattern",))
    return cap.stack("pattern")[:, 0].double().cpu().numpy()


# --- ΔW spectra of one head ------------------------------------------------------------------


def singular_values(matrix: torch.Tensor) -> np.ndarray:
    """Singular values (descending) of a matrix, computed in float64."""
    return torch.linalg.svdvals(matrix.detach().double().cpu()).numpy()


def head_spectra(dual, ft, layer: int, head: int) -> dict[str, np.ndarray]:
    """``{"ΔW_ICL", "ΔW_V (FT)", "ΔW_K (FT)"}`` singular values for one layer and query head.

    ``dual`` is a :class:`dualform.core.dual_form.DualForm` (``layer`` is a model layer index and
    must be among ``dual.layers``); ``ft`` a :class:`dualform.core.finetune.FinetuneResult`.
    """
    if layer not in dual.layers:
        raise ValueError(f"Layer {layer} is not in the dual form (layers {list(dual.layers)}).")
    n_heads = dual.delta_w_icl.shape[1]
    if not 0 <= head < n_heads:
        raise ValueError(f"Head {head} out of range: the model has heads 0..{n_heads - 1}.")
    kv_head = head // (n_heads // ft.n_kv_heads)
    icl = dual.delta_w_icl[dual.layers.index(layer), head]
    return {
        "ΔW_ICL": singular_values(icl),
        "ΔW_V (FT)": singular_values(ft.per_head("v")[layer, kv_head]),
        "ΔW_K (FT)": singular_values(ft.per_head("k")[layer, kv_head]),
    }


# --- what a run records ------------------------------------------------------------------------


def attention_key(results: DaiResults, task: str, max_demos: int) -> dict:
    """What the recorded example depends on (a different key means it is stale)."""
    return as_stored({"config": results.config, "task": task, "max_demos": max_demos,
                      "version": ATTENTION_VERSION})


def example_selection(results: DaiResults) -> tuple[str, Selection] | None:
    """The first task and seed whose learning-rate choice left a finetuned model, with that
    seed's selection (``None``: every seed of every task diverged)."""
    return next(((name, s.selection) for name, t in results.tasks.items() for s in t.seeds
                 if s.selection.lr is not None), None)


def example_task(results: DaiResults) -> str | None:
    """The task of :func:`example_selection` (``None``: all diverged)."""
    chosen = example_selection(results)
    return None if chosen is None else chosen[0]


def record_attention(results_dir: str | Path, results: DaiResults, *, model=None,
                     max_demos: int = 8) -> Path | None:
    """Record the attention example of a run into ``RESULTS_DIR/attention_example.json``.

    Kept when already recorded for the same configuration; ``model`` (the run's model) saves a
    reload. Returns the file, or ``None`` when no task has a finetuned model.
    """
    chosen = example_selection(results)
    if chosen is None:
        return None
    task, selection = chosen
    path = Path(results_dir) / ATTENTION_NAME
    key = attention_key(results, task, max_demos)
    recorded = read_json(path)
    if recorded is not None and recorded.get("key") == key:
        return path
    data = as_stored({"key": key, **compute_attention(results, task, selection, max_demos,
                                                      model=model)})
    return write_text_atomic(path, json.dumps(data, separators=(",", ":")))


def compute_attention(results: DaiResults, task_name: str, sel: Selection, max_demos: int, *,
                      model=None) -> dict:
    """Finetune on the demonstrations of ``sel`` (a seed's chosen demonstration seed and rate),
    record the example."""
    from dualform.core.dual_form import dual_form
    from dualform.core.finetune import finetune_kv
    from dualform.experiments.dai.conditions import demo_training_texts
    from dualform.models.load import load_model
    from dualform.tasks.prompts import build_prompt, load_task, prompt_tokens, sample_demos

    config = results.config
    task = load_task(task_name, seed=config["seed"], n_validation=config["n_validation"],
                     n_test=results.tasks[task_name].n_test)
    demos = sample_demos(task, config["shots"], sel.demo_seed)[:max_demos]
    if model is None:
        model = load_model(config["model"], device=config.get("device"), dtype=config.get("dtype"))
    ft = finetune_kv(model, demo_training_texts(model, task, demos), sel.lr)
    example = attention_example(model, task, demos, task.test[0], ft=ft)
    pt = prompt_tokens(model, build_prompt(task, demos, task.test[0]))
    dual = dual_form(model, pt.tokens, pt.n_demo_tokens, demo_start=pt.demo_start,
                     layers=[example.view_layer])
    head = int(np.argmax(example.demo_mass()[example.view_layer]))
    spectra = head_spectra(dual, ft, example.view_layer, head)
    return {"example": example.to_dict(), "spectra": {k: v.tolist() for k, v in spectra.items()},
            "spectra_layer": example.view_layer, "spectra_head": head}


def read_attention(results_dir: str | Path, results: DaiResults, max_demos: int = 8) -> dict | None:
    """The recorded example of ``results`` (``None`` if absent or recorded for another run)."""
    task = example_task(results)
    recorded = read_json(Path(results_dir) / ATTENTION_NAME)
    if task is None or recorded is None or recorded.get("key") != attention_key(results, task, max_demos):
        return None
    return recorded
