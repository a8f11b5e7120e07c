"""The papers' math on hooked models: torch + TransformerLens only, no I/O, no plotting.

    equations.py        one function per equation of the papers, formula in each docstring
    dual_form.py        ΔW_ICL / W_ZSL / q from a model's own activations; exact softmax split
    relaxed.py          relaxed linear attention as a hook intervention (pattern := raw scores)
    momentum.py         momentum attention Attn + Σ_{i<t} η^{t−i} v_i as a drop-in hook intervention
    momentum_dual.py    the dual form with momentum: meta-gradient plus momentum terms
    finetune.py         Dai's explicit finetuning baseline: SGD on W_K / W_V, ΔW_FT
    finetune_grid.py    several learning rates as one batched run (row r = rate r's W_K / W_V)
    prefix.py           demonstration-prefix reuse (KV cache) and right-padded query batches
    attribution.py      head-by-head ICL and FT effects (attribution patching, exact check)
    metrics.py          Rec2FTP, SimAOU, SimAM, SimAM_Δ — per layer and head, and their reductions
    training_attention.py  Kendall's τ and top-k recall: ICL vs FT attention to the demonstrations
    rank.py             Kendall's τ_b vectorised over rows (equal to scipy's, bit for bit)
    official_random.py  the official scripts' random streams (numpy's and Python's), seeded
"""
