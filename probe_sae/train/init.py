"""What a training run estimates from its first tokens before the first step.

* normalisation statistics (per-dimension mean and standard deviation, or a single scale
  making the mean squared norm equal to d), stored inside the SAE so it takes raw activations;
* the pre-bias ``b_pre``, initialised to the geometric median (Bricken et al. 2023; the MP-SAE
  MNIST study does the same);
* archetypal candidates: k-means centroids of the first tokens (Fel et al. 2025).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NORMALIZATIONS = ("standardize", "sqrt_d", "none")


def normalization_stats(x_ND: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(mean, scale) of the scheme ``kind`` estimated on ``x_ND`` (float64 sums).

    ``standardize``: per-dimension mean and standard deviation (the A-SAE paper standardises);
    ``sqrt_d``: no centring, one scale so that E‖x / scale‖² = d;
    ``none``: identity.
    """
    d = x_ND.shape[1]
    x64 = x_ND.double()
    if kind == "standardize":
        mean = x64.mean(dim=0)
        std = x64.std(dim=0, unbiased=False)
        # constant dimensions get scale 1 rather than a division by zero
        std = torch.where(std > 1e-12 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
        return mean.float(), std.float()
    if kind == "sqrt_d":
        scale = math.sqrt(float(x64.pow(2).sum(dim=1).mean()) / d)
        return torch.zeros(d), torch.full((d,), max(scale, 1e-12))
    if kind == "none":
        return torch.zeros(d), torch.ones(d)
    raise ValueError(f"unknown normalization {kind!r}; choose one of {NORMALIZATIONS}")


def geometric_median(x_ND: Tensor, n_iter: int = 100, tol: float = 1e-7) -> Tensor:
    """The point minimising Σᵢ‖xᵢ − m‖ (Weiszfeld's algorithm, float64)."""
    x = x_ND.double()
    median = x.mean(dim=0)
    for _ in range(n_iter):
        dist = (x - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * x).sum(dim=0) / weights.sum()
        moved = float((new - median).norm())
        median = new
        if moved <= tol * max(float(median.norm()), 1.0):
            break
    return median.to(x_ND.dtype)
