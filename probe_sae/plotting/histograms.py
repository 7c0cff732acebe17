"""Histograms of concept activations (the non-zero codes only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from probe_sae.plotting._display import new_figure


def plot_activation_histograms(
    codes_NC: Tensor,
    concepts: Sequence[int] | None = None,
    *,
    bins: int = 40,
    columns: int = 4,
    log: bool = True,
    max_concepts: int = 16,
) -> Figure:
    """Per concept, a histogram of its non-zero codes over N tokens.

    Args:
        codes_NC: (N, n_concepts) codes (``sae.encode(acts)``).
        concepts: concepts to draw (default: the ``max_concepts`` most frequently firing).
        log: log-scaled counts (activation distributions are heavy-tailed).

    Returns:
        A ``Figure`` with one axes per concept, titled with the concept and its firing frequency;
        a concept that never fires gets an empty axes saying so.
    """
    if codes_NC.ndim != 2:
        raise ValueError(
            f"codes must be (N, n_concepts), got shape {tuple(codes_NC.shape)}; flatten tokens first."
        )
    codes = codes_NC.detach().float().cpu()
    freq = (codes != 0).float().mean(dim=0)
    if concepts is None:
        concepts = torch.argsort(freq, descending=True, stable=True)[:max_concepts].tolist()
    concepts = [int(c) for c in concepts]
    columns = max(1, min(columns, len(concepts)))
    rows = max(1, math.ceil(len(concepts) / columns))
    fig = new_figure(2.2 * columns, 1.7 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    for pos in range(rows * columns):
        ax = axes[pos // columns, pos % columns]
        if pos >= len(concepts):
            ax.set_axis_off()
            continue
        c = concepts[pos]
        values = codes[:, c][codes[:, c] != 0].numpy()
        ax.set_title(f"concept {c} · freq {float(freq[c]):.2%}", fontsize=8)
        if values.size == 0:
            ax.text(0.5, 0.5, "never fires", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.hist(values, bins=bins, color="#3b6ea5", log=log and values.size > 1)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("activation", fontsize=7)
    return fig


def nonzero_values(codes_NC: Tensor, concept: int) -> np.ndarray:
    """The non-zero codes of ``concept`` (what its histogram counts)."""
    column = codes_NC[:, int(concept)].detach().float().cpu()
    return column[column != 0].numpy()
