"""Fraction of variance unexplained (FVU) and R², accumulated exactly over a stream.

FVU = Σᵢ‖xᵢ − x̂ᵢ‖² / Σᵢ‖xᵢ − x̄‖², with x̄ the per-dimension mean over the whole evaluation
set, on raw activations; R² = 1 − FVU. Not a per-token average of ratios, not variance about
zero and not about one scalar mean. Sums are kept in float64, and Σ‖xᵢ − x̄‖² is obtained at
the end as Σ‖xᵢ‖² − N‖x̄‖², so batches can arrive one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ReconstructionStats:
    """Streaming float64 accumulators for FVU / R² over (N, d) batches."""

    n_tokens: int = 0
    sq_error: float = 0.0
    sq_norm: float = 0.0
    sum_x: Tensor | None = field(default=None, repr=False)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor) -> None:
        """Add a batch of raw activations (N, d) and their reconstructions (N, d)."""
        if x.shape != x_hat.shape or x.ndim != 2:
            raise ValueError(
                f"x and x_hat must both be (N, d), got {tuple(x.shape)} and {tuple(x_hat.shape)}"
            )
        x, x_hat = x.detach(), x_hat.detach()
        self.n_tokens += x.shape[0]
        if x.dtype == torch.float64 and x_hat.dtype == torch.float64:
            diff = x - x_hat
        else:  # the difference in float64 without a float64 copy of both inputs
            diff = x.double().sub_(x_hat)
        self.sq_error += float(torch.linalg.vecdot(diff.view(-1), diff.view(-1)))
        self.sq_norm += float(torch.linalg.vector_norm(x, dtype=torch.float64).square())
        batch_sum = x.sum(dim=0, dtype=torch.float64).cpu()
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum

    @property
    def total_variance(self) -> float:
        """Σᵢ‖xᵢ − x̄‖² over everything seen."""
        if self.n_tokens == 0 or self.sum_x is None:
            raise ValueError("no tokens accumulated yet")
        return self.sq_norm - float(self.sum_x.pow(2).sum()) / self.n_tokens

    @property
    def fvu(self) -> float:
        return self.sq_error / self.total_variance

    @property
    def r2(self) -> float:
        return 1.0 - self.fvu


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """FVU of one (N, d) batch (per-dimension mean, float64)."""
    stats = ReconstructionStats()
    stats.update(x, x_hat)
    return stats.fvu
