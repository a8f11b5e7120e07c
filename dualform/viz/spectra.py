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

from dualform.experiments.dai.attention import head_spectra
from dualform.viz.maps import TEMPLATE


def effective_rank(sigma: np.ndarray) -> float:
    """``exp`` of the entropy of the normalised singular values (1 = rank one)."""
    p = sigma / max(float(sigma.sum()), 1e-300)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


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
