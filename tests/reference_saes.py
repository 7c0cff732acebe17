"""Straightforward dense reference implementations, for tests and benchmarks only.

They compute the same functions as the fast families in the most direct way (dense codes,
dense decoder products, matching pursuit recomputing every correlation), so the fast code
can be checked against them in value and gradient, and timed beside them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dense_topk(x_c_ND: Tensor, w_enc_CD: Tensor, b_enc_C: Tensor, k: int) -> Tensor:
    """(N, n_concepts) dense TopK codes: ReLU of each token's k largest pre-activations."""
    pre = x_c_ND @ w_enc_CD.T + b_enc_C
    values, indices = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, indices, torch.relu(values))


def dense_decode(codes_NC: Tensor, atoms_CD: Tensor, b_pre_D: Tensor) -> Tensor:
    """(N, d) = codes @ atoms + b_pre."""
    return codes_NC @ atoms_CD + b_pre_D


def archetypal_atoms(
    weights_CK: Tensor, candidates_KD: Tensor, relaxation_CD: Tensor | None
) -> Tensor:
    """(n_concepts, d) = W @ C (+ Λ), materialised."""
    atoms = weights_CK @ candidates_KD
    return atoms if relaxation_CD is None else atoms + relaxation_CD


def naive_matching_pursuit(x_c_ND: Tensor, atoms_CD: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Matching pursuit recomputing ``r @ D.T`` at every step; returns (codes (N, C), residual)."""
    residual = x_c_ND
    codes = x_c_ND.new_zeros(x_c_ND.shape[0], atoms_CD.shape[0])
    for _ in range(k):
        corr = torch.relu(residual @ atoms_CD.T)
        j = corr.detach().argmax(dim=1, keepdim=True)
        coef = corr.gather(1, j)
        codes = codes.scatter_add(1, j, coef)
        residual = residual - coef * atoms_CD[j.squeeze(1)]
    return codes, residual
