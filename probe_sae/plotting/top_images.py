"""Top-activating images per concept, found by streaming over many images.

An image's score for a concept is its **maximum patch activation** (the concept's strongest
code over the image's patch tokens at the layer). `top_activating_images` streams the images
in batches and keeps, per concept, only the ``n`` best scores and their image positions, plus
a few running totals used to rank concepts; it never holds the codes of all images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from probe_sae.data.images import Images, image_source
from probe_sae.interventions.maps import concept_maps, upsample
from probe_sae.models import VisionModel
from probe_sae.plotting._batches import iter_batches, read_items, to_model_pixels
from probe_sae.plotting._display import display_image
from probe_sae.saes import SAE

#: ways to rank concepts (`TopImages.rank`)
RANKINGS = ("mass", "max", "image_frequency")


@dataclass
class TopImages:
    """Per concept, the ``n`` images with the highest maximum patch activation.

    Attributes:
        concepts: (C,) the concept indices scored (row ``i`` of the tensors is ``concepts[i]``).
        values: (C, n) scores (max patch activation) in descending order; ``-inf`` where fewer
            than ``n`` images were seen.
        indices: (C, n) positions of those images in the image source; ``-1`` where none.
        mass: (C,) sum of the concept's codes over every patch token of every image.
        image_frequency: (C,) fraction of images where the concept fires on some patch.
        patch_frequency: (C,) fraction of patch tokens where the concept fires.
        n_images: images streamed.
        grid: (h, w) patch grid of the layer.
        image_scores: (n_images, C) every image's score, when asked (``keep_scores=True``).
    """

    concepts: Tensor
    values: Tensor
    indices: Tensor
    mass: Tensor
    image_frequency: Tensor
    patch_frequency: Tensor
    n_images: int
    grid: tuple[int, int]
    image_scores: Tensor | None = None

    def row(self, concept: int) -> int:
        """Row of ``concept`` in the tensors."""
        hits = (self.concepts == int(concept)).nonzero()
        if hits.numel() == 0:
            raise ValueError(
                f"concept {concept} was not scored; scored: {self.concepts.tolist()[:20]}..."
            )
        return int(hits[0, 0])

    def rank(self, by: str = "mass", limit: int | None = None) -> list[int]:
        """Concept indices, best first, skipping concepts that never fired.

        ``by="mass"`` (default): total activation over all patches of all images — concepts that
        carry the most of the layer's coded signal; ``"max"``: the single highest patch
        activation; ``"image_frequency"``: the fraction of images it fires on.
        """
        if by not in RANKINGS:
            raise ValueError(f"rank by one of {RANKINGS}, got {by!r}.")
        score = {
            "mass": self.mass,
            "max": self.values[:, 0],
            "image_frequency": self.image_frequency,
        }[by]
        alive = self.image_frequency > 0
        order = torch.argsort(
            score.double().masked_fill(~alive, -np.inf), descending=True, stable=True
        )
        order = order[alive[order]]
        return self.concepts[order[:limit]].tolist()


@torch.no_grad()
def top_activating_images(
    model: VisionModel,
    layer: str | int,
    sae: SAE,
    images: Images,
    concepts: Sequence[int] | Tensor | None = None,
    *,
    n: int = 8,
    batch_size: int = 16,
    max_images: int | None = None,
    encode_options: dict[str, Any] | None = None,
    progress: bool = True,
    keep_scores: bool = False,
) -> TopImages:
    """Stream ``images`` through ``model`` and ``sae`` and keep each concept's top ``n`` images.

    Args:
        images: a (N, C, H, W) tensor, a folder, a Dataset or PIL images.
        concepts: concepts to score (default all ``sae.n_concepts``).
        batch_size: images per forward pass; memory is about
            ``batch_size × len(concepts) × h × w`` floats.
        max_images: stop after this many images.
        keep_scores: also keep every image's score per concept (``TopImages.image_scores``,
            ``n_images × len(concepts)`` floats), e.g. to match concepts with known labels.

    Returns:
        A `TopImages` with (C, n) scores and image positions.
    """
    source = image_source(images)
    index = (
        torch.arange(sae.n_concepts)
        if concepts is None
        else torch.as_tensor(concepts).long().reshape(-1)
    )
    n_c = index.numel()
    values = torch.full((n_c, n), -np.inf)
    positions = torch.full((n_c, n), -1, dtype=torch.long)
    mass = torch.zeros(n_c, dtype=torch.float64)
    fired_images = torch.zeros(n_c, dtype=torch.float64)
    fired_patches = torch.zeros(n_c, dtype=torch.float64)
    seen, grid = 0, (0, 0)
    kept: list[Tensor] = []
    total = source.length if max_images is None else min(max_images, source.length or max_images)
    bar = tqdm(total=total, desc="top images", unit="img", disable=not progress)
    try:
        for start, got in iter_batches(source, batch_size):
            keep = [i for i, im in enumerate(got) if im is not None]
            if max_images is not None:
                keep = keep[: max(0, max_images - seen)]
            if not keep:
                break
            pixels = to_model_pixels(model, [got[i] for i in keep])
            maps_BChw = concept_maps(
                model, layer, sae, pixels, index, encode_options=encode_options
            )
            grid = (maps_BChw.shape[-2], maps_BChw.shape[-1])
            maps_BChw = maps_BChw.cpu()
            score_CB = maps_BChw.amax(dim=(2, 3)).T
            mass += maps_BChw.double().sum(dim=(0, 2, 3))
            if keep_scores:
                kept.append(score_CB.T.float().clone())
            fired_images += (score_CB > 0).double().sum(dim=1)
            fired_patches += (maps_BChw != 0).double().sum(dim=(0, 2, 3))
            where = torch.tensor([start + i for i in keep]).expand(n_c, -1)
            values, pick = torch.cat([values, score_CB], dim=1).topk(n, dim=1)
            positions = torch.cat([positions, where], dim=1).gather(1, pick)
            seen += len(keep)
            bar.update(len(keep))
            if max_images is not None and seen >= max_images:
                break
    finally:
        bar.close()
    if seen == 0:
        raise ValueError("no readable images: give a (N, C, H, W) tensor, a folder or PIL images.")
    positions[values == -np.inf] = -1
    return TopImages(
        concepts=index,
        values=values,
        indices=positions,
        mass=mass,
        image_frequency=fired_images / seen,
        patch_frequency=fired_patches / (seen * grid[0] * grid[1]),
        n_images=seen,
        grid=grid,
        image_scores=torch.cat(kept) if keep_scores else None,
    )


@dataclass
class ConceptTiles:
    """What a plot of top images draws: per concept, its top images and heatmaps.

    Attributes:
        concepts: the C concepts drawn, in row order.
        images: C lists of (H, W, 3) display arrays (up to n each).
        heat: C lists of (H, W) heatmaps of the row's concept over those images.
        scores: C lists of the images' max patch activations; ``image_index`` their positions.
        image_names: C lists of the images' names (``ImageSource.name``: file names for a
            folder), or empty.
        labels: per concept a name for what it detects (e.g. the ground-truth object), ``""``
            where unknown; empty when none is known.
    """

    concepts: list[int]
    images: list[list[np.ndarray]]
    heat: list[list[np.ndarray]]
    scores: list[list[float]]
    image_index: list[list[int]]
    image_names: list[list[str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def head(self, n: int) -> ConceptTiles:
        """The first ``n`` concepts."""
        return ConceptTiles(*(getattr(self, f.name)[:n] for f in fields(self)))

    def caption(self, row: int, col: int) -> str:
        """A tile's title: the image's short name (or position) and its score."""
        names = self.image_names[row] if row < len(self.image_names) else []
        name = short_name(names[col]) if col < len(names) else f"#{self.image_index[row][col]}"
        return f"{name} · {self.scores[row][col]:.2g}"

    def concept_label(self, row: int, prefix: str = "concept ") -> str:
        """``"concept 12"``, with what it detects when known (``"concept 12: red_disc"``)."""
        label = self.labels[row] if row < len(self.labels) else ""
        return f"{prefix}{self.concepts[row]}" + (f": {label}" if label else "")


def short_name(name: str) -> str:
    """A file path's last component (``"/data/cat.png"`` -> ``"cat.png"``); others as they are."""
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or name


@torch.no_grad()
def concept_tiles(
    model: VisionModel,
    layer: str | int,
    sae: SAE,
    images: Images,
    top: TopImages,
    concepts: Sequence[int],
    *,
    n: int | None = None,
    batch_size: int = 16,
    encode_options: dict[str, Any] | None = None,
) -> ConceptTiles:
    """Recompute the heatmaps of ``concepts`` over their top images (only those images are
    read again and encoded)."""
    source = image_source(images)
    concepts = [int(c) for c in concepts]
    rows = [top.row(c) for c in concepts]
    n = top.indices.shape[1] if n is None else min(n, top.indices.shape[1])
    wanted = sorted({int(i) for r in rows for i in top.indices[r, :n] if int(i) >= 0})
    at = {img: j for j, img in enumerate(wanted)}
    shown: list[np.ndarray] = []
    maps: list[Tensor] = []
    for s in range(0, len(wanted), batch_size):
        items = read_items(source, wanted[s : s + batch_size])
        pixels = to_model_pixels(model, items)
        size = (pixels.shape[-2], pixels.shape[-1])
        got = concept_maps(model, layer, sae, pixels, concepts, encode_options=encode_options)
        maps.append(upsample(got.float().cpu(), size).clamp_min(0))
        shown += [display_image(im, size) for im in items]
    heat_UCHW = torch.cat(maps) if maps else torch.zeros(0)
    tiles = ConceptTiles(concepts, [], [], [], [], [])
    for c_pos, r in enumerate(rows):
        imgs = [int(i) for i in top.indices[r, :n] if int(i) >= 0]
        tiles.images.append([shown[at[i]] for i in imgs])
        tiles.heat.append([heat_UCHW[at[i], c_pos].numpy() for i in imgs])
        tiles.scores.append([float(v) for v in top.values[r, : len(imgs)]])
        tiles.image_index.append(imgs)
        tiles.image_names.append([_name(source, i) for i in imgs])
    return tiles


def _name(source: Any, index: int) -> str:
    """``source.name(index)`` when the source names its images, else ``"#index"``."""
    namer = getattr(source, "name", None)
    return str(namer(index)) if callable(namer) else f"#{index}"
