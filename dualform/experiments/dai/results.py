"""The typed schema of ``results.json`` of ``reproduce dai`` (and of each ``sweep`` model).

The writer (:mod:`dualform.experiments.dai.protocol`) builds these dataclasses, every reader
(tables, figures, report, analyses) reads them back with :meth:`DaiResults.load`; no key path of
the JSON is spelled anywhere else.

    DaiResults            config, versions, schema_version, tasks (+ settings per task), pooled
                          intervals, failed jobs
      TaskResult          one task: its seeds, untrained baseline, intervals, timing
        SeedResult        one independent demonstration set: selection + MetricSet (+ attribution,
                          notes on metrics that do not apply, why FT diverged)
          MetricSet       {metric name: Summary}; names in :mod:`.metric_names` (``SIMAOU``)
        Intervals         {metric name: Interval} pooled over seeds (and per layer / head marks)

A metric is a :class:`Summary` of its unreduced values: the headline ``mean``, ``per_layer``,
``per_head`` (per-head metrics) and ``per_example`` (the example's mean over layers/heads: what
the intervals resample). Any nested dict of summaries from
:func:`dualform.experiments.dai.scoring.similarity_metrics` becomes a flat :data:`MetricSet`
with dotted names, so a new metric needs no change here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dualform.core import metrics as M
from dualform.errors import DualformError
from dualform.experiments.stats import Interval
from dualform.infra.io import read_json, write_json_atomic

#: Bump when the layout changes; :meth:`DaiResults.from_json` refuses other versions.
SCHEMA_VERSION = 2

class SchemaVersionError(DualformError, ValueError):
    """A results file written with another schema version."""


def _floats(values: Any) -> Any:
    """Nested lists of floats with non-finite values as ``None`` (strict JSON)."""
    arr = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, np.nan).tolist() if arr.ndim else _float(arr)


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


@dataclass
class Summary:
    """One metric of one seed: headline mean, per layer, per head and per example."""

    mean: float | None
    per_layer: list | None = None
    per_head: list | None = None
    per_example: list | None = None
    #: the unreduced ``[example, layer(, head)]`` values, in memory only (never stored)
    values: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, values: Any, *, skip_undefined: bool = False) -> Summary:
        """From unreduced values ``[example, layer]`` or ``[example, layer, head]`` (official
        reduction: mean over examples, then layers; per head: over heads first).
        ``skip_undefined``: the means leave out ``nan`` values (a metric's undefined entries,
        :func:`dualform.core.metrics.simam_delta`); a layer or head with none reads ``nan``."""
        values = np.asarray(values, dtype=np.float64)
        per_example = M.mean_of_defined(values.reshape(len(values), -1), axis=1)
        skip = {"skip_undefined": skip_undefined}
        return cls(
            mean=_float(M.overall(values, **skip)), per_layer=_floats(M.layer_mean(values, **skip)),
            per_head=_floats(M.head_mean(values, **skip)) if values.ndim == 3 else None,
            per_example=_floats(per_example), values=values,
        )

    @classmethod
    def scalar(cls, value: float, per_example: Any = None) -> Summary:
        """A number (accuracy, Rec2FTP) with the per-example values whose mean it is."""
        examples = None if per_example is None else _floats(np.asarray(per_example, dtype=float))
        return cls(mean=_float(value), per_example=examples)

    def to_json(self) -> dict:
        out = {"mean": self.mean}
        for key in ("per_layer", "per_head", "per_example"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, data: dict) -> Summary:
        return cls(data.get("mean"), data.get("per_layer"), data.get("per_head"),
                   data.get("per_example"))


MetricSet = dict[str, Summary]


def metric_set(nested: dict, prefix: str = "") -> MetricSet:
    """Flatten scoring's nested output into ``{dotted name: Summary}`` (non-summary leaves such
    as the dual-form norm maps, ``notes``, counts and ``not_applicable`` reasons are left out;
    see :class:`SeedResult`)."""
    out: MetricSet = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Summary):
            out[name] = value
        elif isinstance(value, dict):
            out.update(metric_set(value, name))
    return out


@dataclass
class Attribution:
    """Mean head-attribution maps of ICL and FT (``[layer][head]``) and their rank agreement."""

    icl: list
    ft: list
    spearman: float | None
    kendall: float | None
    n_examples: int = 0
    #: heads whose effect's interval (over seeds and examples) excludes 0 (task level only)
    icl_distinct: list | None = None
    ft_distinct: list | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> Attribution:
        return cls(**data)


@dataclass
class Selection:
    """What validation chose for one seed: the demonstration seed and the learning rate."""

    demo_seed: int
    lr: float | None
    demo_seed_val_acc: dict[str | int, float]  # keys stored as str
    lr_val_acc: dict[str, float | str]

    def __post_init__(self) -> None:
        self.demo_seed_val_acc = {str(k): v for k, v in self.demo_seed_val_acc.items()}

    def to_json(self) -> dict:
        return {"demo_seed": self.demo_seed, "lr": self.lr,
                "demo_seed_val_acc": dict(self.demo_seed_val_acc),  # str keys (__post_init__)
                "lr_val_acc": dict(self.lr_val_acc)}

    @classmethod
    def from_json(cls, data: dict) -> Selection:
        return cls(**data)


@dataclass
class SeedResult:
    """One independent replicate: its demonstrations' selection and every metric on the test."""

    replicate: int
    selection: Selection
    metrics: MetricSet
    n_f2t: int
    ft_diverged: bool = False
    norm_delta_w_icl: list | None = None  # [layer][head], mean over test examples
    norm_w_zsl: list | None = None
    attribution: Attribution | None = None
    #: test examples finetuning fixes (ZSL ✗, FT ✓): Rec2FTP's denominator
    n_ft_fixed: int | None = None
    #: metric (dotted name or block) → why it does not apply (scoring's ``notes``)
    notes: dict[str, str] = field(default_factory=dict)
    #: why FT is missing (every rate diverged on validation, or at the chosen rate)
    ft_diverged_reason: str | None = None

    @classmethod
    def from_scored(cls, replicate: int, selection: Selection, scored: dict, *,
                    ft_diverged: bool = False) -> SeedResult:
        """From :func:`~dualform.experiments.dai.scoring.similarity_metrics`'s output (or what
        :func:`~dualform.experiments.dai.scoring.without_ft` left of it)."""
        dual = scored.get("dual_form", {})
        return cls(replicate, selection, metric_set(scored), scored.get("n_f2t", 0), ft_diverged,
                   dual.get("norm_delta_w_icl"), dual.get("norm_w_zsl"),
                   n_ft_fixed=scored.get("n_ft_fixed"), notes=dict(scored.get("notes", {})),
                   ft_diverged_reason=scored.get("ft_diverged_reason"))

    def metric(self, name: str) -> Summary | None:
        return self.metrics.get(name)

    def not_applicable(self, name: str) -> str | None:
        """Why ``name`` does not apply to this seed (a note on it or on its block), else ``None``."""
        return next((why for key, why in self.notes.items()
                     if name == key or name.startswith(f"{key}.")), None)

    def to_json(self) -> dict:
        out = {"replicate": self.replicate, "selection": self.selection.to_json(),
               "metrics": {k: v.to_json() for k, v in self.metrics.items()},
               "n_f2t": self.n_f2t, "n_ft_fixed": self.n_ft_fixed, "ft_diverged": self.ft_diverged,
               "norm_delta_w_icl": self.norm_delta_w_icl, "norm_w_zsl": self.norm_w_zsl,
               "notes": self.notes}
        if self.ft_diverged_reason is not None:
            out["ft_diverged_reason"] = self.ft_diverged_reason
        if self.attribution is not None:
            out["attribution"] = self.attribution.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict) -> SeedResult:
        attribution = data.get("attribution")
        return cls(
            data["replicate"], Selection.from_json(data["selection"]),
            {k: Summary.from_json(v) for k, v in data["metrics"].items()}, data["n_f2t"],
            data.get("ft_diverged", False), data.get("norm_delta_w_icl"), data.get("norm_w_zsl"),
            Attribution.from_json(attribution) if attribution else None,
            data.get("n_ft_fixed"), data.get("notes", {}), data.get("ft_diverged_reason"),
        )



@dataclass
class Intervals:
    """Metrics pooled over seeds: 95 % intervals of the mean (grouped bootstrap: seeds, then
    test examples), per layer, and per head whether the interval excludes 0."""

    overall: dict[str, Interval] = field(default_factory=dict)
    per_layer: dict[str, list[Interval]] = field(default_factory=dict)
    head_distinct: dict[str, list] = field(default_factory=dict)  # [layer][head] booleans

    def get(self, name: str) -> Interval | None:
        return self.overall.get(name)

    def to_json(self) -> dict:
        return {"overall": {k: v.to_json() for k, v in self.overall.items()},
                "per_layer": {k: [i.to_json() for i in v] for k, v in self.per_layer.items()},
                "head_distinct": self.head_distinct}

    @classmethod
    def from_json(cls, data: dict) -> Intervals:
        return cls({k: _interval(v) for k, v in data.get("overall", {}).items()},
                   {k: [_interval(i) for i in v] for k, v in data.get("per_layer", {}).items()},
                   data.get("head_distinct", {}))


def _interval(data: dict) -> Interval:
    """An :class:`Interval` as stored (strict JSON writes NaN as ``null``)."""
    return Interval(*(np.nan if data[k] is None else data[k] for k in ("mean", "low", "high")),
                    data["n"])


@dataclass
class TaskResult:
    """One task: every seed (trained and untrained model), intervals and paired differences."""

    task: str
    template: str
    label_words: list[str]
    shots: int
    n_test: int
    n_attribution: int
    seeds: list[SeedResult]
    untrained: list[SeedResult] = field(default_factory=list)
    intervals: Intervals = field(default_factory=Intervals)
    untrained_intervals: Intervals = field(default_factory=Intervals)
    #: "trained − untrained: <metric>" and "<metric> − random" → Interval of the paired difference
    differences: dict[str, Interval] = field(default_factory=dict)
    attribution: Attribution | None = None  # pooled over seeds
    timing_s: dict[str, float] = field(default_factory=dict)
    n_untrained: int = 0  # the untrained baseline's test examples: the first n_untrained

    def n_f2t(self) -> int:
        return sum(s.n_f2t for s in self.seeds)

    def release_values(self) -> None:
        """Drop every seed's in-memory unreduced values once the intervals are computed (they
        are never stored; a 6-task run otherwise keeps ~0.5 GiB of them until it ends)."""
        for seed in (*self.seeds, *self.untrained):
            for summary in seed.metrics.values():
                summary.values = None

    def ft_diverged(self) -> bool:
        """Every seed's finetuning diverged (no FT number at all)."""
        return bool(self.seeds) and all(s.ft_diverged for s in self.seeds)

    def per_layer_mean(self, name: str, untrained: bool = False) -> list | None:
        """Per-layer values of a metric, averaged over seeds (``None`` if not recorded)."""
        seeds = self.untrained if untrained else self.seeds
        rows = [s.metrics[name].per_layer for s in seeds
                if name in s.metrics and s.metrics[name].per_layer is not None]
        return M.mean_of_defined(np.array(rows, dtype=float), 0).tolist() if rows else None

    def per_head_mean(self, name: str) -> list | None:
        rows = [s.metrics[name].per_head for s in self.seeds
                if name in s.metrics and s.metrics[name].per_head is not None]
        return M.mean_of_defined(np.array(rows, dtype=float), 0).tolist() if rows else None

    def mean_map(self, attr: str) -> list | None:
        """A per-seed ``[layer][head]`` map (e.g. ``norm_delta_w_icl``) averaged over seeds."""
        rows = [getattr(s, attr) for s in self.seeds if getattr(s, attr) is not None]
        return np.mean(np.array(rows, dtype=float), 0).tolist() if rows else None

    def to_json(self) -> dict:
        out = {
            "task": self.task, "template": self.template, "label_words": self.label_words,
            "shots": self.shots, "n_test": self.n_test, "n_attribution": self.n_attribution,
            "seeds": [s.to_json() for s in self.seeds],
            "untrained": [s.to_json() for s in self.untrained],
            "intervals": self.intervals.to_json(),
            "untrained_intervals": self.untrained_intervals.to_json(),
            "differences": {k: v.to_json() for k, v in self.differences.items()},
            "timing_s": self.timing_s,
            "n_untrained": self.n_untrained,
        }
        if self.attribution is not None:
            out["attribution"] = self.attribution.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict) -> TaskResult:
        return cls(
            data["task"], data["template"], data["label_words"], data["shots"], data["n_test"],
            data.get("n_attribution", 0), [SeedResult.from_json(s) for s in data["seeds"]],
            [SeedResult.from_json(s) for s in data.get("untrained", [])],
            Intervals.from_json(data.get("intervals", {})),
            Intervals.from_json(data.get("untrained_intervals", {})),
            {k: _interval(v) for k, v in data.get("differences", {}).items()},
            Attribution.from_json(data["attribution"]) if data.get("attribution") else None,
            data.get("timing_s", {}),
            data.get("n_untrained", data["n_test"] if data.get("untrained") else 0),  # was: all
        )


@dataclass
class DaiResults:
    """The whole ``results.json``: configuration, versions, tasks and intervals pooled over tasks."""

    config: dict
    versions: dict = field(default_factory=dict)
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    pooled: Intervals = field(default_factory=Intervals)
    pooled_untrained: Intervals = field(default_factory=Intervals)
    pooled_differences: dict[str, Interval] = field(default_factory=dict)
    failed_jobs: list[dict] = field(default_factory=list)
    #: task → the settings that produced it (:func:`dualform.infra.results_dir.record_entry`)
    settings: dict[str, dict] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def model(self) -> str:
        return self.config.get("model", "")

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version, "config": self.config,
            "versions": self.versions,
            "tasks": {k: t.to_json() for k, t in self.tasks.items()},
            "pooled": self.pooled.to_json(), "pooled_untrained": self.pooled_untrained.to_json(),
            "pooled_differences": {k: v.to_json() for k, v in self.pooled_differences.items()},
            "failed_jobs": self.failed_jobs, "settings": self.settings,
        }

    @classmethod
    def from_json(cls, data: dict, source: str | Path = "results.json") -> DaiResults:
        found = data.get("schema_version", 1)
        if found != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{source} has results schema version {found}, this dualform reads version "
                f"{SCHEMA_VERSION}. Rerun `dualform reproduce dai` into a new --out directory "
                "(or the same one after moving the old file away), or read it with the "
                "dualform version that wrote it (see its \"versions\" entry)."
            )
        return cls(
            data["config"], data.get("versions", {}),
            {k: TaskResult.from_json(t) for k, t in data.get("tasks", {}).items()},
            Intervals.from_json(data.get("pooled", {})),
            Intervals.from_json(data.get("pooled_untrained", {})),
            {k: _interval(v) for k, v in data.get("pooled_differences", {}).items()},
            data.get("failed_jobs", []), data.get("settings", {}),
        )

    @classmethod
    def load(cls, path: str | Path) -> DaiResults | None:
        """Read ``path`` (a ``results.json`` or the directory holding it); ``None`` if absent."""
        path = Path(path)
        path = path / "results.json" if path.is_dir() else path
        data = read_json(path)
        return None if data is None else cls.from_json(data, path)

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())
