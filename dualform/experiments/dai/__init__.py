"""Dai et al. 2023: is in-context learning implicit finetuning? The experiment end to end.

    conditions.py   ZSL / ICL / FT records at the last token (plain and prefix-reuse paths)
    scoring.py      records → the paper's metrics and the follow-up ones
    protocol.py     DaiConfig, run_dai: seed / learning-rate selection, test, attribution, baseline
    sweep.py        the same protocol as independent jobs on an executor
    attention.py    the attention example a run records (ICL / ZSL / FT patterns, ΔW spectra)
"""
