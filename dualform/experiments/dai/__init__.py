"""Dai et al. 2023: is in-context learning implicit finetuning? The experiment end to end.

    conditions.py    ZSL / ICL / FT records at the last token (plain and prefix-reuse paths),
                     the finetuning texts and their queries
    scoring.py       records → the paper's metrics and the follow-up ones
    config.py        DaiConfig (what defines a run) and TaskContext (a task as the protocol sees it)
    selection.py     the validation stage: each replicate's demonstration seed and learning rate
    protocol.py      run_dai and the test stage: records, metrics, attribution, untrained baseline
    heads.py         the head-attribution stage: ICL and FT effects per head on the test queries
    pooling.py       seeds → 95 % intervals per task and pooled, paired differences, marked heads
    metric_names.py  the metrics' names (SIMAOU = "simaou.normalized"), for the writer and every reader
    results.py       the typed, versioned schema of results.json (writer and every reader)
    sweep.py         the same stage functions as independent jobs on an executor
    workers.py       several tasks at once on worker threads sharing the weights (--workers)
    attention.py     the attention example a run records (ICL / ZSL / FT patterns, ΔW spectra)
"""
