"""Experiments: each reproduces a paper's protocol on top of ``dualform.core``.

    dai/              Dai et al. 2023: ZSL / ICL / FT records, metrics, attribution, sweeps
    momentum/         Dai et al. §5: vanilla vs momentum attention trained from scratch, η ablation
    vonoswald/        von Oswald et al. 2023: LSA ≡ one GD step, GD / GD++, trained LSA
    walkthrough.py    the dual form on one prompt in float64, layer by layer
    stats.py          means, spreads and bootstrap intervals shared by every experiment
    architectures.py  the 20-family architecture matrix: tiny models and every identity per family
"""
