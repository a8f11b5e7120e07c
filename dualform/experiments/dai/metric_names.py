"""The names of ``reproduce dai``'s metrics, defined once for the writer and every reader.

A name is the dotted path of the metric in :func:`dualform.experiments.dai.scoring.similarity_metrics`'
output (``SIMAOU = "simaou.normalized"``); :mod:`dualform.experiments.dai.results` stores each
under its name, the tables, figures, report and analyses read it back by the constant.
"""

from __future__ import annotations

ACCURACY = {"zsl": "accuracy.zsl", "icl": "accuracy.icl", "ft": "accuracy.ft"}
REC2FTP = "rec2ftp"
SIMAOU = "simaou.normalized"
SIMAOU_UNNORM = "simaou.unnormalized"
SIMAOU_RANDOM = "simaou.random"
SIMAOU_Z = "simaou.per_head_z"
SIMAM_BEFORE = "simam.before"
SIMAM_AFTER = "simam.after"
SIMAM_DELTA = "simam.delta"
KENDALL = "kendall.value"
KENDALL_RANDOM = "kendall.random"
KENDALL_EXAMPLE = "kendall.example"
KENDALL_EXAMPLE_RANDOM = "kendall.example_random"
TOPK_TOKEN = "topk_recall.token.value"
TOPK_TOKEN_RANDOM = "topk_recall.token.random"
TOPK_EXAMPLE = "topk_recall.example.value"
TOPK_EXAMPLE_RANDOM = "topk_recall.example.random"
COS_ICL_FT = "dual_form.cos_icl_update_ft"
#: Metric → its random baseline (compared as a paired difference).
RANDOM_BASELINES = {SIMAOU: SIMAOU_RANDOM, KENDALL: KENDALL_RANDOM}


def f2t(name: str) -> str:
    """A similarity metric in the ``f2t`` mode (over the examples ZSL ✗, FT ✓, ICL ✓)."""
    return f"f2t.{name}"


#: f2t-mode metrics: averages over a subset of the examples (flagged when it is small).
F2T_NAMES = tuple(f2t(n) for n in (SIMAOU, SIMAOU_UNNORM, SIMAOU_RANDOM, SIMAM_BEFORE,
                                   SIMAM_AFTER, SIMAM_DELTA))


def over_every_example(name: str) -> bool:
    """Whether a metric has one value per test example, in test order (not Rec2FTP or an f2t
    metric, which average over a subset that depends on the model's answers)."""
    return name != REC2FTP and not name.startswith(f2t(""))


#: Ratios whose denominator is a subset of the examples: warn below this many.
MIN_DENOMINATOR = 20
