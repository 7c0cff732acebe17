"""Dictionaries: the (n_concepts, d) matrix of atoms an SAE decodes with.

Two kinds share one interface, so every encoder family can decode with either:

* :class:`FreeDictionary`: the atoms are a parameter, optionally kept at unit norm.
* :class:`~probe_sae.saes.archetypal.ArchetypalDictionary`: atoms constrained to
  (a relaxation of) the convex hull of candidate data points (Fel et al., 2025).

Constrained dictionaries are kept feasible by two calls the trainer makes around each
optimizer step: :meth:`Dictionary.prepare_gradients` before it (for unit-norm atoms,
remove the gradient component parallel to each atom) and :meth:`Dictionary.apply_constraints`
right after it (project back onto the feasible set).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from probe_sae.saes.sparse import SparseCodes, sparse_decode


class Dictionary(nn.Module):
    """Interface of a dictionary of ``n_concepts`` atoms in ``R^d``."""

    kind: str = "abstract"
    n_concepts: int
    d_model: int

    def atoms(self) -> Tensor:
        """(n_concepts, d) the atoms, differentiable with respect to the parameters."""
        raise NotImplementedError

    def decode_dense(self, codes_NC: Tensor) -> Tensor:
        """(N, d) = codes @ atoms."""
        return codes_NC @ self.atoms()

    def decode_sparse(self, codes: SparseCodes) -> Tensor:
        """(N, d) decoding only the selected atoms."""
        return sparse_decode(codes, self.atoms())

    @torch.no_grad()
    def prepare_gradients(self) -> None:
        """Adjust gradients before the optimizer step (default: nothing)."""

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Project the parameters back onto the feasible set after an optimizer step."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (without tensors)."""
        raise NotImplementedError


class FreeDictionary(Dictionary):
    """Atoms as a free parameter ``weight`` (n_concepts, d).

    With ``unit_norm=True`` (TopK, BatchTopK, JumpReLU, MP-SAE) every atom has norm 1
    after each :meth:`apply_constraints`, and :meth:`prepare_gradients` removes the
    gradient component parallel to each atom (Bricken et al. 2023; Gao et al. 2024).
    """

    kind = "free"

    def __init__(
        self,
        n_concepts: int,
        d_model: int,
        unit_norm: bool = True,
        init: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n_concepts, self.d_model, self.unit_norm = n_concepts, d_model, unit_norm
        if init is None:
            init = random_unit_atoms(n_concepts, d_model, generator)
        elif init.shape != (n_concepts, d_model):
            raise ValueError(
                f"dictionary init has shape {tuple(init.shape)}, expected ({n_concepts}, {d_model})"
            )
        self.weight = nn.Parameter(init.clone().float())

    def atoms(self) -> Tensor:
        return self.weight

    @torch.no_grad()
    def prepare_gradients(self) -> None:
        if not self.unit_norm or self.weight.grad is None:
            return
        w, g = self.weight, self.weight.grad
        # g -= (g·u) u with u = w/‖w‖, i.e. g -= (g·w / ‖w‖²) w, in place without temporaries
        coef = torch.linalg.vecdot(g, w) / torch.linalg.vector_norm(w, dim=1).square().clamp_min(1e-24)
        g.addcmul_(w, coef.unsqueeze(1), value=-1.0)

    @torch.no_grad()
    def apply_constraints(self) -> None:
        if self.unit_norm:
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "unit_norm": self.unit_norm}


def random_unit_atoms(
    n_concepts: int, d_model: int, generator: torch.Generator | None = None
) -> Tensor:
    """(n_concepts, d) Gaussian atoms scaled to unit norm."""
    w = torch.randn(n_concepts, d_model, generator=generator)
    return w / w.norm(dim=1, keepdim=True)
