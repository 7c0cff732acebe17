"""Per-concept statistics gathered in one streaming pass over the images.

`ConceptStats` is fed the SAE codes of one batch of images at a time, (B, T, C) over every token
of the layer, and keeps only running state whose size does not depend on the number of images:

* per concept its top ``k`` images by **maximum patch activation** (the score
  `probe_sae.plotting.top_activating_images` uses, kept the same way: a running ``topk`` over
  the kept scores and the batch's), with the concept's patch map over each of them, quantised
  to ``uint8`` relative to that image's score;
* a histogram of its non-zero activations over every token, in fixed log-spaced bins
  (`HIST_EDGES`);
* how many tokens it fires on by token kind (CLS, registers, patches), its summed activation
  (for the mean over the tokens it fires on), its maximum over every token, and how many images
  it fires on (on some patch, as ``TopImages.image_frequency``).

Per image `image_tops` gives its top concepts (by the same score) with their patch maps, which
the site writes out chunk by chunk, so they are never all held either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: histogram bin edges of non-zero activations: 8 bins a decade from 1e-3 to 1e3; activations
#: below the first edge count in the first bin, above the last in the last one
HIST_EDGES = torch.logspace(-3, 3, 49, dtype=torch.float64)
#: token kinds counted apart, in this order
TOKEN_KINDS = ("cls", "register", "patch")


def quantise_maps(maps_XP: Tensor, scale_X: Tensor) -> Tensor:
    """(X, P) non-negative maps -> uint8, each row relative to its ``scale`` (0 where scale ≤ 0)."""
    scale = scale_X.clamp_min(1e-12)[:, None]
    return (maps_XP.clamp_min(0) / scale * 255).round().clamp(0, 255).to(torch.uint8)


def kind_masks(
    token_index_T: Tensor, n_prefix: int, cls: int | None, registers: tuple[int, ...]
) -> Tensor:
    """(3, T) masks of CLS / register / patch tokens (in `TOKEN_KINDS` order) of a layer."""
    masks = torch.zeros(3, token_index_T.numel(), dtype=torch.bool)
    if cls is not None:
        masks[0] = token_index_T == cls
    if registers:
        masks[1] = torch.isin(token_index_T, torch.tensor(registers))
    masks[2] = token_index_T >= n_prefix
    return masks


@dataclass
class ConceptStats:
    """Running per-concept statistics of an SAE over a stream of images (see module docstring).

    Args:
        n_concepts: C, the SAE's concepts.
        n_patches: P, patch tokens per image (the patch grid's ``h·w``).
        kinds_3T: (3, T) masks of CLS / register / patch tokens in the captured token axis.
        patch_index: (P,) positions of the patch tokens in that axis, row-major over the grid.
        k: top images kept per concept.
    """

    n_concepts: int
    n_patches: int
    kinds_3T: Tensor
    patch_index: Tensor
    k: int = 8

    def __post_init__(self) -> None:
        c, k = self.n_concepts, self.k
        self.top_values = torch.full((c, k), -np.inf)
        self.top_index = torch.full((c, k), -1, dtype=torch.long)
        self.top_maps = torch.zeros(c, k, self.n_patches, dtype=torch.uint8)
        self.hist = torch.zeros(c, HIST_EDGES.numel() - 1, dtype=torch.long)
        self.fires_by_kind = torch.zeros(3, c, dtype=torch.long)
        self.tokens_by_kind = torch.zeros(3, dtype=torch.long)
        self.fired_images = torch.zeros(c, dtype=torch.long)
        self.total = torch.zeros(c, dtype=torch.float64)
        self.max_all = torch.zeros(c)
        self.n_images = 0
        self.n_tokens = 0
        n_tokens = self.kinds_3T.shape[1]
        # per token position: its kind (0 CLS, 1 register, 2 patch, 3 none) and grid cell (or -1)
        self._kind_T = torch.full((n_tokens,), 3, dtype=torch.long)
        for j in (2, 1, 0):
            self._kind_T[self.kinds_3T[j]] = j
        self._cell_T = torch.full((n_tokens,), -1, dtype=torch.long)
        self._cell_T[self.patch_index] = torch.arange(self.patch_index.numel())
        self._last: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    @torch.no_grad()
    def update(self, codes_BTC: Tensor, positions_B: Tensor) -> Tensor:
        """Fold in the codes of the images at ``positions`` (B,); returns their (B, C) scores.

        Works on the non-zero codes only (one ``nonzero`` over the batch), so its cost follows
        the number of firings, not ``B × T × C``.
        """
        b, t, c = codes_BTC.shape
        flat = codes_BTC.detach().reshape(b * t, c)
        rows, cols = flat.nonzero(as_tuple=True)
        values = flat[rows, cols].float().cpu()
        rows, cols = rows.cpu(), cols.cpu()
        token, image = rows % t, rows // t
        # every token: firing counts by kind, sums, maxima, histogram of non-zero values
        kind = self._kind_T[token]
        for j in range(3):
            self.fires_by_kind[j] += torch.bincount(cols[kind == j], minlength=c)
        self.tokens_by_kind += b * self.kinds_3T.sum(dim=1)
        self.total.index_add_(0, cols, values.double())
        self.max_all.scatter_reduce_(0, cols, values, "amax")
        bins = (torch.bucketize(values.double().abs(), HIST_EDGES) - 1).clamp(
            0, self.hist.shape[1] - 1
        )
        self.hist.view(-1).index_add_(0, cols * self.hist.shape[1] + bins, torch.ones_like(bins))
        # patch tokens: each image's score (max patch activation) per concept
        cell = self._cell_T[token]
        on_patch = cell >= 0
        p_image, p_concept, p_cell, p_value = (
            image[on_patch],
            cols[on_patch],
            cell[on_patch],
            values[on_patch],
        )
        self._last = (p_image, p_concept, p_cell, p_value)
        score_BC = torch.zeros(b * c).scatter_reduce_(0, p_image * c + p_concept, p_value, "amax")
        score_BC = score_BC.view(b, c)
        self.fired_images += (score_BC > 0).sum(dim=0)
        # running top-k of images per concept, with their patch maps; only the rows of concepts
        # where some image of the batch beats the k-th kept score change
        score_CB = score_BC.T.contiguous()
        changed = (score_CB > self.top_values[:, -1:]).any(dim=1).nonzero().squeeze(1)
        if changed.numel():
            self._merge(changed, score_CB[changed], positions_B.long())
        self.n_images += b
        self.n_tokens += b * t
        return score_BC

    def _merge(self, changed: Tensor, sub_CB: Tensor, positions_B: Tensor) -> None:
        """Merge the batch's scores of the ``changed`` concepts into their top-k; patch maps
        are built only for the (concept, image) pairs that enter it."""
        n, b = sub_CB.shape
        k = self.k
        top, pick = torch.cat([self.top_values[changed], sub_CB], dim=1).topk(k, dim=1)
        old = pick < k
        index = torch.where(old, self.top_index[changed].gather(1, pick.clamp_max(k - 1)),
                            positions_B[(pick - k).clamp_min(0)])  # fmt: skip
        maps = self.top_maps[changed].gather(
            1, pick.clamp_max(k - 1)[:, :, None].expand(-1, -1, self.n_patches)
        )
        new_r, new_j = (~old).nonzero(as_tuple=True)
        if new_r.numel():
            entry = torch.full((n, b), -1, dtype=torch.long)  # (changed row, image) -> new entry
            entry[new_r, pick[new_r, new_j] - k] = torch.arange(new_r.numel())
            slot = torch.full((self.n_concepts,), -1, dtype=torch.long)
            slot[changed] = torch.arange(n)
            p_image, p_concept, p_cell, p_value = self._last  # type: ignore[misc]
            row = slot[p_concept]
            e = torch.where(row >= 0, entry[row.clamp_min(0), p_image], -1)
            keep = e >= 0
            dense = torch.zeros(new_r.numel(), self.n_patches)
            dense[e[keep], p_cell[keep]] = p_value[keep]
            maps[new_r, new_j] = quantise_maps(dense, top[new_r, new_j])
        self.top_values[changed] = top
        self.top_index[changed] = index
        self.top_maps[changed] = maps

    @torch.no_grad()
    def image_tops(self, score_BC: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per image of the last `update` its ``m`` top concepts: (B, m) concepts, (B, m)
        scores, (B, m, P) uint8 maps."""
        if self._last is None:
            raise RuntimeError(
                "image_tops() reads the batch of the last update(); call that first."
            )
        b, c = score_BC.shape
        m = min(m, c)
        scores, concepts = score_BC.topk(m, dim=1)
        p_image, p_concept, p_cell, p_value = self._last
        slot = torch.full((b, c), -1, dtype=torch.long)
        slot.scatter_(1, concepts, torch.arange(m).expand(b, -1).contiguous())
        j = slot[p_image, p_concept]
        keep = j >= 0
        dense = torch.zeros(b, m, self.n_patches)
        dense[p_image[keep], j[keep], p_cell[keep]] = p_value[keep]
        quant = quantise_maps(dense.view(b * m, -1), scores.reshape(-1)).view(b, m, -1)
        return concepts, scores, quant

    def finish(self) -> dict[str, Tensor]:
        """Per-concept figures: frequencies, max / mean activation, kind fractions."""
        if self.n_images == 0:
            raise ValueError(
                "no readable images: give a (N, C, H, W) tensor, a folder or PIL images."
            )
        fires = self.hist.sum(dim=1)  # every non-zero code, over tokens of every kind
        frequency = fires.double() / max(self.n_tokens, 1)
        by_kind = self.fires_by_kind.double() / self.tokens_by_kind.clamp_min(1)[:, None].double()
        self.top_index[self.top_values == -np.inf] = -1
        return {
            "frequency": frequency,
            "image_frequency": self.fired_images.double() / self.n_images,
            "max": self.max_all.double(),
            "max_patch": self.top_values[:, 0].clamp_min(0).double(),
            "mean": self.total / fires.clamp_min(1).double(),
            "by_kind": by_kind,
        }
