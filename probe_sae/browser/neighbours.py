"""Nearest concepts by decoder cosine, computed blockwise.

The full (C, C) cosine matrix of a 16k-concept dictionary is 1 GB in float32; `nearest_concepts`
multiplies one block of rows at a time and keeps each row's top ``k`` (itself excluded), so
memory is ``block × C`` floats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def nearest_concepts(atoms_CD: Tensor, k: int = 8, block: int = 1024) -> tuple[Tensor, Tensor]:
    """Each atom's ``k`` most similar other atoms by cosine.

    Args:
        atoms_CD: (C, d) dictionary atoms (``sae.dictionary``).
        k: neighbours per atom (at most C - 1).
        block: rows multiplied at a time.

    Returns:
        (C, k) neighbour indices and (C, k) cosines, most similar first.
    """
    unit = F.normalize(atoms_CD.detach().float().cpu(), dim=1)
    c = unit.shape[0]
    k = max(0, min(k, c - 1))
    index = torch.zeros(c, k, dtype=torch.long)
    cosine = torch.zeros(c, k)
    if k == 0:
        return index, cosine
    for start in range(0, c, block):
        sim = unit[start : start + block] @ unit.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -float("inf")  # not itself
        cosine[start : start + block], index[start : start + block] = sim.topk(k, dim=1)
    return index, cosine
