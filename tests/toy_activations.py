"""Toy activations with a known sparse dictionary, for quick checks of SAE training.

Each token is a sparse non-negative combination of ``n_atoms`` ground-truth unit directions,
plus an offset and a little Gaussian noise: the generative model SAEs assume, so the learned
dictionary can be compared with the true one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SparseMixture:
    """Tokens ``x`` (N, d) made from ``atoms`` (n_atoms, d) with ``codes`` (N, n_atoms)."""

    x: Tensor
    atoms: Tensor
    codes: Tensor
    offset: Tensor


def sparse_mixture(
    n_tokens: int = 8192,
    d_model: int = 64,
    n_atoms: int = 128,
    active: int = 6,
    noise: float = 0.02,
    seed: int = 0,
) -> SparseMixture:
    """Sample tokens with exactly ``active`` ground-truth atoms each, magnitudes in [0.5, 2]."""
    if not 0 < active <= n_atoms:
        raise ValueError(f"active must be in [1, n_atoms={n_atoms}], got {active}")
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d_model, generator=g)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    chosen = torch.rand(n_tokens, n_atoms, generator=g).argsort(dim=1)[:, :active]
    magnitudes = 0.5 + 1.5 * torch.rand(n_tokens, active, generator=g)
    codes = torch.zeros(n_tokens, n_atoms).scatter_(1, chosen, magnitudes)
    offset = torch.randn(d_model, generator=g)
    x = codes @ atoms + offset + noise * torch.randn(n_tokens, d_model, generator=g)
    return SparseMixture(x, atoms, codes, offset)
