"""Views: figures, tables and the report. They read results; they do not run models.

    maps.py         layer × head heatmaps
    spectra.py      singular-value spectra of ΔW_ICL / ΔW_FT
    attention.py    a run's attention example: last-token bars, circuitsvis views (offline)
    figures.py      every figure of a dai results directory
    tables.py       paper-layout tables with intervals (terminal and markdown)
    terminal.py     terminal tables that never cut a cell, the bench's rows (rich only: no torch)
    report.py       the self-contained report.html
    html_tables.py  HTML tables of formatted rows and of any JSON value (the report's blocks)
    vonoswald.py    figures of the regression experiment
    momentum.py     figures of the momentum experiment (twins, paired differences, η ablation)
"""
