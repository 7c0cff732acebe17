"""Geometry of dictionaries, as defined in the A-SAE paper (Fel et al. 2025, App. C) and the
MP-SAE paper (Costa, Fel et al. 2025).

All functions take atoms as rows, (n_atoms, d), and work on unit-normalised atoms where the
definition is about directions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
from torch import Tensor


def _unit(atoms: Tensor) -> Tensor:
    a = atoms.detach().double()
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


def stability(d1: Tensor, d2: Tensor) -> float:
    """max over signed permutations Π of (1/n)·Tr(D₁ᵀ Π D₂) for unit-norm atoms.

    Hungarian matching on −|cos|, then the mean of the matched |cos| (a sign flip of an atom
    does not count as a difference). Both dictionaries must have the same number of atoms.
    """
    if d1.shape != d2.shape:
        raise ValueError(
            f"stability compares dictionaries of the same shape, got {tuple(d1.shape)} and {tuple(d2.shape)}"
        )
    from scipy.optimize import linear_sum_assignment  # here: importing scipy takes ~0.3 s

    cos = (_unit(d1) @ _unit(d2).T).abs().numpy()
    rows, cols = linear_sum_assignment(-cos)
    return float(cos[rows, cols].mean())


def mean_pairwise_stability(dictionaries: Sequence[Tensor]) -> float:
    """Mean :func:`stability` over all pairs (the A-SAE paper's seed-stability score)."""
    if len(dictionaries) < 2:
        raise ValueError("stability needs at least two dictionaries")
    return float(np.mean([stability(a, b) for a, b in combinations(dictionaries, 2)]))


def max_cosine(d1: Tensor, d2: Tensor) -> float:
    """Mean over atoms of ``d1`` of their best cosine with an atom of ``d2``."""
    return float((_unit(d1) @ _unit(d2).T).max(dim=1).values.mean())


def ood_score(atoms: Tensor, data: Tensor, chunk: int = 8192) -> float:
    """1 − mean over atoms of the max cosine to any data point (0: every atom is a data direction)."""
    a = _unit(atoms)
    best = torch.full((a.shape[0],), -1.0, dtype=torch.float64)
    for start in range(0, data.shape[0], chunk):
        best = torch.maximum(best, (a @ _unit(data[start : start + chunk]).T).max(dim=1).values)
    return float(1.0 - best.mean())


def stable_rank(atoms: Tensor) -> float:
    """‖D‖²_F / ‖D‖²₂ (of the atoms as given, not normalised)."""
    a = atoms.detach().double()
    return float(a.pow(2).sum() / torch.linalg.matrix_norm(a, ord=2).pow(2))


def effective_rank(atoms: Tensor) -> float:
    """exp(−Σ σ̃ log σ̃), σ̃ the singular values normalised to sum 1 (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(atoms.detach().double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def coherence(atoms: Tensor) -> float:
    """max over i ≠ j of |⟨Dᵢ, Dⱼ⟩| for unit-normalised atoms."""
    g = (_unit(atoms) @ _unit(atoms).T).abs()
    g.fill_diagonal_(0.0)
    return float(g.max())


def babel(atoms: Tensor, r: int) -> list[float]:
    """Babel function μ₁(1..r): μ₁(s) = max_j max_{|Λ|=s, j∉Λ} Σ_{i∈Λ} |⟨D_j, Dᵢ⟩| (Tropp 2004).

    For each atom the worst Λ is its s largest |correlations| with other atoms. μ₁(1) is the
    coherence.
    """
    n = atoms.shape[0]
    if not 0 < r < n:
        raise ValueError(f"r must be in [1, n_atoms - 1 = {n - 1}], got {r}")
    g = (_unit(atoms) @ _unit(atoms).T).abs()
    g.fill_diagonal_(-math.inf)
    top = g.topk(r, dim=1).values.cumsum(dim=1)  # (n, r): worst sums per atom
    return top.max(dim=0).values.tolist()


def plausibility(atoms: Tensor, class_directions: Tensor) -> float:
    """(1/c)·Σᵢ maxⱼ cos(vᵢ, Dⱼ), vᵢ the rows of a classifier head (A-SAE paper, §4)."""
    return float((_unit(class_directions) @ _unit(atoms).T).max(dim=1).values.mean())


def soft_identifiability(codes_NA: Tensor, presence_NC: Tensor) -> dict[str, object]:
    """Soft identifiability (A-SAE paper, §4): recover known concepts from codes.

    For each ground-truth concept j: the best accuracy of ``codes[:, i] > λ`` against its
    presence ``y_j`` over atoms i and thresholds λ at the 1st..100th percentiles of
    ``codes[:, i]``; the score is the mean over concepts. Also returns the all-absent baseline
    (predicting "absent" for every concept), which is high when concepts are rare.
    """
    z = codes_NA.detach().double()
    y = presence_NC.detach().double()
    n = z.shape[0]
    if y.shape[0] != n:
        raise ValueError(
            f"codes ({n} rows) and presence ({y.shape[0]} rows) must describe the same images"
        )
    q = torch.linspace(0.01, 1.0, 100, dtype=torch.float64)
    thresholds = torch.quantile(z, q, dim=0).T  # (A, 100)
    pred = (z[:, :, None] > thresholds[None]).double().reshape(n, -1)  # (N, A·100)
    agree = 2 * pred.T @ y - pred.sum(0)[:, None] - y.sum(0)[None] + n  # (A·100, C) correct counts
    acc = agree / n
    best, where = acc.max(dim=0)
    return {
        "score": float(best.mean()),
        "per_concept": best.tolist(),
        "best_atom": (where // 100).tolist(),
        "all_absent_baseline": float((1 - y.mean(0)).mean()),
    }
