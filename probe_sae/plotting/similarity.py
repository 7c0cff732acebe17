"""Cosine similarity between the atoms of one or two dictionaries, optionally Hungarian-ordered."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from probe_sae.plotting._display import new_figure
from probe_sae.saes import SAE

#: a dictionary: (n_atoms, d) atoms as a tensor or array, or an SAE (its ``dictionary``)
Atoms = SAE | Tensor | np.ndarray


def _atoms(d: Atoms) -> Tensor:
    atoms = d.dictionary if hasattr(d, "dictionary") else d
    atoms = torch.as_tensor(atoms).detach().double().cpu()
    if atoms.ndim != 2:
        raise ValueError(f"a dictionary is (n_atoms, d) or an SAE; got shape {tuple(atoms.shape)}.")
    return atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)


def similarity_matrix(
    d1: Atoms, d2: Atoms | None = None, *, match: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines between atoms: (n1, n2) matrix with its row and column orders.

    Args:
        d1, d2: (n, d) atoms or SAEs (``sae.dictionary``); ``d2`` defaults to ``d1``.
        match: reorder ``d2``'s atoms by the signed Hungarian matching of
            `probe_sae.metrics.stability` (maximise matched |cos|), so matched pairs lie on
            the diagonal; unmatched atoms (of the larger one) follow.

    Returns:
        ``(cos, rows, cols)``: ``cos[i, j] = cos(d1[rows[i]], d2[cols[j]])``.
    """
    a = _atoms(d1)
    b = a if d2 is None else _atoms(d2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"dictionaries of widths {a.shape[1]} and {b.shape[1]} cannot be compared."
        )
    cos = (a @ b.T).numpy()
    rows, cols = np.arange(a.shape[0]), np.arange(b.shape[0])
    if match:
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(-np.abs(cos))
        rows = np.concatenate([r, np.setdiff1d(rows, r)])
        cols = np.concatenate([c, np.setdiff1d(cols, c)])
    return cos[np.ix_(rows, cols)], rows, cols


def plot_similarity(
    d1: Atoms,
    d2: Atoms | None = None,
    *,
    match: bool = False,
    absolute: bool = False,
    labels: tuple[str, str] = ("dictionary 1", "dictionary 2"),
) -> Figure:
    """Heatmap of atom cosines between ``d1`` and ``d2`` (or ``d1`` with itself).

    With ``match`` the columns are Hungarian-ordered (see `similarity_matrix`) and the title
    gives the mean matched |cos| (the A-SAE stability score for equal sizes).

    Returns:
        A ``Figure``; ``ax.images[0].get_array()`` is the (n1, n2) matrix drawn.
    """
    cos, _, _ = similarity_matrix(d1, d2, match=match)
    shown = np.abs(cos) if absolute else cos
    fig = new_figure(4.4, 3.8)
    ax = fig.add_subplot()
    im = ax.imshow(
        shown,
        cmap="magma" if absolute else "RdBu_r",
        vmin=0 if absolute else -1,
        vmax=1,
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="|cos|" if absolute else "cos")
    ax.set_ylabel(labels[0] + " atoms")
    ax.set_xlabel(
        (labels[0] if d2 is None else labels[1]) + " atoms" + (" (matched order)" if match else "")
    )
    title = "atom cosine similarity"
    if match:
        k = min(cos.shape)
        title += f" · matched |cos| {np.abs(np.diag(cos[:k, :k])).mean():.3f}"
    ax.set_title(title, fontsize=9)
    return fig
