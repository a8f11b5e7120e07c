"""Singular-value spectra of the ICL "update" ΔW_ICL against the real finetuning update ΔW_FT.

What is compared, for one layer and query head ``h`` (KV head ``g = h // (heads / kv_heads)``):

* ``ΔW_ICL = Σ_demo v_i ⊗ k_i`` — ``[d_head, d_head]``, from :func:`dualform.core.dual_form`: the
  matrix the demonstrations add to the zero-shot linear-attention map ``q ↦ W_ZSL q``;
* ``ΔW_V(FT)`` and ``ΔW_K(FT)`` of KV head ``g`` — ``[d_head, d_model]`` rows of
  ``W_after − W_before`` from :meth:`dualform.core.finetune.FinetuneResult.per_head`.

The matrices live in different spaces (ΔW_ICL maps key space to value space; ΔW_FT maps the
residual stream to one head's values / keys), but all three have at most ``d_head`` singular
values, and their *shape* — how many directions carry the update — is comparable. Each spectrum
is divided by its largest singular value (``normalize=True``) because the FT scale depends on
the learning rate; the raw values are in the hover text. The effective rank
``exp(H(σ / Σσ))`` is given in the legend.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch

from dualform.viz.maps import TEMPLATE


def singular_values(matrix: torch.Tensor) -> np.ndarray:
    """Singular values (descending) of a matrix, computed in float64."""
    return torch.linalg.svdvals(matrix.detach().double().cpu()).numpy()


def effective_rank(sigma: np.ndarray) -> float:
    """``exp`` of the entropy of the normalised singular values (1 = rank one)."""
    p = sigma / max(float(sigma.sum()), 1e-300)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


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


def spectrum_figure(dual, ft, layer: int, head: int, *, normalize: bool = True) -> go.Figure:
    """Singular-value spectra of ΔW_ICL vs ΔW_V / ΔW_K of finetuning for one head (log scale)."""
    spectra = head_spectra(dual, ft, layer, head)
    return spectra_figure(spectra, f"Singular values at layer {layer}, head {head}",
                          normalize=normalize, layer=layer, head=head)


def spectra_figure(spectra: dict[str, np.ndarray], title: str, *, normalize: bool = True,
                   layer: int | None = None, head: int | None = None) -> go.Figure:
    """Plot precomputed spectra (``{name: σ}``); see :func:`spectrum_figure`."""
    styles = {"ΔW_ICL": ("#1f77b4", "solid"), "ΔW_V (FT)": ("#d62728", "dash"),
              "ΔW_K (FT)": ("#ff7f0e", "dot")}
    where = f"layer {layer}, head {head}<br>" if layer is not None else ""
    fig = go.Figure()
    for name, sigma in spectra.items():
        y = sigma / sigma[0] if normalize and sigma[0] > 0 else sigma
        color, dash = styles.get(name, ("#2ca02c", "solid"))
        fig.add_trace(go.Scatter(
            x=np.arange(1, len(sigma) + 1), y=y, customdata=sigma, mode="lines+markers",
            name=f"{name} (eff. rank {effective_rank(sigma):.1f})", line={"color": color, "dash": dash},
            hovertemplate=f"{name}<br>{where}σ_%{{x}} = %{{customdata:.4g}}"
            + ("<br>σ/σ₁ = %{y:.3g}" if normalize else "") + "<extra></extra>",
        ))
    fig.update_layout(
        title=title, template=TEMPLATE, xaxis={"title": "index i"},
        yaxis={"title": "σ_i / σ_1" if normalize else "σ_i", "type": "log",
               "exponentformat": "power"},
    )
    return fig
