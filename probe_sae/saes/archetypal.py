"""Archetypal dictionaries (Fel et al., 2025, "Archetypal SAE", arXiv 2502.12892).

Atoms are convex combinations of fixed candidate points ``C`` (n_candidates, d), usually
k-means centroids of the activations:

* A-SAE:  ``D = W @ C`` with ``W >= 0`` and every row of ``W`` summing to 1;
* RA-SAE: ``D = W @ C + Λ`` with ``‖Λ_i‖₂ <= δ`` for every row (a relaxation of the hull).

By default ``W`` starts at the identity (atom i = candidate i, so ``n_candidates >=
n_concepts``) and ``Λ`` at zero, the paper's initialisation: the same start for every seed given
the candidates. A later critique (arXiv 2606.02061) attributes A-SAE's stability across seeds
to that shared start, so ``init="random"`` draws it from the SAE's seed instead: each atom
starts at a different candidate chosen at random (archetypal analysis's classic start at
random data points; as good a start as the identity, only not the same one for every seed),
and each row of Λ uniformly in the ball of radius δ. With as many candidates as concepts the
random W is only a permutation of the identity, which stability ignores (a warning says so).
:meth:`ArchetypalDictionary.apply_constraints` projects back onto the constraints and must be
called right after each optimizer step, so the dictionary is always feasible when used (the
reference library applied them lazily on the next forward).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

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
    init: Literal["deterministic", "random"] = "deterministic"
    """Initial W and Λ: deterministic (atom i at candidate i, Λ = 0, as in the paper: the same
    start for every seed) or random (from the SAE's seed: each atom at a different random
    candidate, rows of Λ uniform in the δ-ball)."""

    def __post_init__(self) -> None:
        if self.delta < 0:
            raise ConfigError(f"delta must be >= 0 (0 = A-SAE, > 0 = RA-SAE), got {self.delta}")
        if self.n_candidates is not None and self.n_candidates <= 0:
            raise ConfigError(
                f"n_candidates must be positive, got {self.n_candidates}: it is the number of "
                "candidate points; leave it unset (None) for the default"
            )
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {list(INITS)}, got {self.init!r}")


#: the initialisations of an archetypal dictionary (see :class:`ArchetypalConfig`)
INITS = ("deterministic", "random")


class ArchetypalDictionary(Dictionary):
    """``D = W @ C (+ Λ)``: atoms in the (relaxed) convex hull of the candidates ``C``.

    Args:
        candidates: (n_candidates, d) candidate points (a buffer, not trained).
        n_concepts: number of atoms; at most ``n_candidates``.
        delta: relaxation radius δ. ``0`` gives A-SAE (no Λ at all); ``> 0`` gives RA-SAE.
        init: ``"deterministic"`` (W = identity, Λ = 0) or ``"random"`` (atom i at a random
            candidate, distinct for each atom, Λ uniform in the δ-ball, drawn with
            ``generator``); see :class:`ArchetypalConfig`.
        generator: the random numbers of ``init="random"``.
    """

    kind = "archetypal"

    def __init__(
        self,
        candidates: Tensor,
        n_concepts: int,
        delta: float = 0.0,
        init: str = ArchetypalConfig.init,
        generator: torch.Generator | None = None,
    ) -> None:
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
        if init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
        self.n_concepts, self.d_model, self.delta = n_concepts, d_model, float(delta)
        self.init = init
        self.register_buffer("candidates", candidates.detach().clone().float())
        if init == "random":
            if n_candidates == n_concepts:
                warnings.warn(
                    f"init='random' with as many candidates as concepts ({n_concepts}) only "
                    "permutes the deterministic start of W, which stability ignores: pass more "
                    "candidates (e.g. n_candidates = 4 × n_concepts) for a different start",
                    stacklevel=2,
                )
            weights = random_vertex_rows(n_concepts, n_candidates, generator)
            relaxation = (
                random_ball_rows(n_concepts, d_model, delta, generator) if delta > 0 else None
            )
        else:
            weights = torch.eye(n_concepts, n_candidates)
            relaxation = torch.zeros(n_concepts, d_model) if delta > 0 else None
        self.weights = nn.Parameter(weights)
        self.relaxation = None if relaxation is None else nn.Parameter(relaxation)

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
        return {
            "kind": self.kind,
            "n_candidates": self.n_candidates,
            "delta": self.delta,
            "init": self.init,
        }


def random_vertex_rows(
    n_rows: int, n_cols: int, generator: torch.Generator | None = None
) -> Tensor:
    """(n_rows, n_cols) one-hot rows at distinct columns drawn at random (``n_cols >=
    n_rows``): each atom starts at its own randomly chosen candidate."""
    pick = torch.randperm(n_cols, generator=generator)[:n_rows]
    return F.one_hot(pick, n_cols).float()


def random_ball_rows(
    n_rows: int, d: int, radius: float, generator: torch.Generator | None = None
) -> Tensor:
    """(n_rows, d) rows drawn uniformly in the ball of ``radius``: a Gaussian direction scaled
    to ``radius · U^(1/d)``."""
    direction = torch.randn(n_rows, d, generator=generator)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radii = radius * torch.rand(n_rows, 1, generator=generator).pow(1.0 / d)
    return direction * radii
