"""Archetypal dictionaries (Fel et al., 2025, "Archetypal SAE", arXiv 2502.12892).

Atoms are convex combinations of fixed candidate points ``C`` (n_candidates, d), usually
k-means centroids of the activations:

* A-SAE:  ``D = W @ C`` with ``W >= 0`` and every row of ``W`` summing to 1;
* RA-SAE: ``D = W @ C + Λ`` with ``‖Λ_i‖₂ <= δ`` for every row (a relaxation of the hull).

``W`` starts at the identity (atom i = candidate i, so ``n_candidates >= n_concepts``) and
``Λ`` at zero. :meth:`ArchetypalDictionary.apply_constraints` projects back onto the
constraints and must be called right after each optimizer step, so the dictionary is always
feasible when used (the reference library applied them lazily on the next forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe_sae.config import ConfigError
from probe_sae.saes.dictionary import Dictionary
from probe_sae.saes.sparse import SparseCodes, sparse_decode


@dataclass(frozen=True)
class ArchetypalConfig:
    """An archetypal dictionary: atoms in the (relaxed) convex hull of candidate points."""

    delta: float = 1.0
    """Relaxation radius δ of RA-SAE (‖Λᵢ‖ ≤ δ); 0 gives A-SAE."""
    n_candidates: int | None = None
    """Candidate points (k-means centroids of the first tokens; the paper uses 32k); default:
    max(n_concepts, min(4 × n_concepts, the tokens seen before training))."""

    def __post_init__(self) -> None:
        if self.delta < 0:
            raise ConfigError(f"delta must be >= 0 (0 = A-SAE, > 0 = RA-SAE), got {self.delta}")
        if self.n_candidates is not None and self.n_candidates <= 0:
            raise ConfigError(
                f"n_candidates must be positive, got {self.n_candidates}: it is the number of "
                "candidate points; leave it unset (None) for the default"
            )


class ArchetypalDictionary(Dictionary):
    """``D = W @ C (+ Λ)``: atoms in the (relaxed) convex hull of the candidates ``C``.

    Args:
        candidates: (n_candidates, d) candidate points (a buffer, not trained).
        n_concepts: number of atoms; at most ``n_candidates``.
        delta: relaxation radius δ. ``0`` gives A-SAE (no Λ at all); ``> 0`` gives RA-SAE.
    """

    kind = "archetypal"

    def __init__(self, candidates: Tensor, n_concepts: int, delta: float = 0.0) -> None:
        super().__init__()
        if candidates.ndim != 2:
            raise ValueError(
                f"candidates must be a (n_candidates, d) matrix, got shape {tuple(candidates.shape)}"
            )
        n_candidates, d_model = candidates.shape
        if n_candidates < n_concepts:
            raise ValueError(
                f"an archetypal dictionary of {n_concepts} concepts needs at least {n_concepts} "
                f"candidate points (atom i starts at candidate i), got {n_candidates}: pass more "
                "candidates (e.g. kmeans(acts, n_clusters=...)) or fewer concepts"
            )
        if delta < 0:
            raise ValueError(f"delta must be >= 0 (0 = A-SAE, > 0 = RA-SAE), got {delta}")
        self.n_concepts, self.d_model, self.delta = n_concepts, d_model, float(delta)
        self.register_buffer("candidates", candidates.detach().clone().float())
        self.weights = nn.Parameter(torch.eye(n_concepts, n_candidates))
        self.relaxation = nn.Parameter(torch.zeros(n_concepts, d_model)) if delta > 0 else None

    @property
    def n_candidates(self) -> int:
        return int(self.candidates.shape[0])

    def atoms(self) -> Tensor:
        atoms = self.weights @ self.candidates
        return atoms if self.relaxation is None else atoms + self.relaxation

    def decode_dense(self, codes_NC: Tensor) -> Tensor:
        n_tokens = codes_NC.shape[0]
        n_c, n_k, d = self.n_concepts, self.n_candidates, self.d_model
        # (codes @ W) @ C versus codes @ (W @ C): pick the cheaper association.
        if n_tokens * n_c * n_k + n_tokens * n_k * d < n_c * n_k * d + n_tokens * n_c * d:
            out = (codes_NC @ self.weights) @ self.candidates
            return out if self.relaxation is None else out + codes_NC @ self.relaxation
        return codes_NC @ self.atoms()

    def decode_sparse(self, codes: SparseCodes) -> Tensor:
        n_tokens, n_entries = codes.n_tokens, codes.values.numel()
        n_k, d = self.n_candidates, self.d_model
        # Factored: gather E rows of W, then one (N, n_candidates) @ C product; versus
        # materialising D = W @ C. Both forward and backward scale the same way.
        factored = n_entries * n_k + n_tokens * n_k * d
        materialised = self.n_concepts * n_k * d + n_entries * d
        if factored >= materialised:
            return sparse_decode(codes, self.atoms())
        mix_NK = F.embedding_bag(
            codes.indices,
            self.weights,
            codes.offsets,
            mode="sum",
            per_sample_weights=codes.values.to(self.weights.dtype),
        )
        out = mix_NK @ self.candidates
        return out if self.relaxation is None else out + sparse_decode(codes, self.relaxation)

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Project: ``W ← ReLU(W)`` with rows rescaled to sum 1; ``Λ_i ← Λ_i · min(1, δ/‖Λ_i‖)``.

        A row of W with no positive entry is reset to a one-hot at its largest entry.
        """
        w = self.weights
        dead_rows = w.amax(dim=1) <= 0
        if dead_rows.any():
            best = w[dead_rows].argmax(dim=1)
            w[dead_rows] = F.one_hot(best, self.n_candidates).to(w.dtype)
        w.clamp_(min=0)
        w.mul_(w.sum(dim=1, keepdim=True).reciprocal_())
        if self.relaxation is not None:
            lam = self.relaxation
            norms = lam.norm(dim=1, keepdim=True)
            # δ / max(‖Λ_i‖, tiny) never divides by zero, so δ = 0 gives Λ = 0, not NaN.
            lam.mul_((self.delta / norms.clamp_min(1e-12)).clamp(max=1.0))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_candidates": self.n_candidates, "delta": self.delta}
