"""Figures of concepts over their top images: a row per concept, or an atlas of many concepts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from probe_sae.data.images import Images
from probe_sae.models import VisionModel
from probe_sae.plotting._display import new_figure, overlay
from probe_sae.plotting.top_images import (
    ConceptTiles,
    TopImages,
    concept_tiles,
    top_activating_images,
)
from probe_sae.saes import SAE


def draw_top_images(
    tiles: ConceptTiles,
    *,
    alpha: float = 0.8,
    cmap: str = "inferno",
    tile: float = 1.3,
    min_pixels: int = 0,
    contour: bool = False,
) -> Figure:
    """A row per concept of ``tiles``: its top images with its heatmap (one scale per row).

    Each tile is titled with the image's name (file name for a folder, else its position) and
    its max patch activation; the row with the concept and, when known, what it detects.
    ``min_pixels`` and ``contour``: see `probe_sae.plotting._display.overlay`.
    """
    n_cols = max((len(row) for row in tiles.images), default=1) or 1
    n_rows = max(len(tiles.concepts), 1)
    fig = new_figure(tile * n_cols + 0.6, tile * n_rows + 0.2)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(len(tiles.concepts)):
        vmax = max((float(h.max()) for h in tiles.heat[r]), default=None)
        for j in range(n_cols):
            ax = axes[r, j]
            if j >= len(tiles.images[r]):
                ax.set_axis_off()
                continue
            overlay(
                ax,
                tiles.images[r][j],
                tiles.heat[r][j],
                alpha=alpha,
                cmap=cmap,
                vmax=vmax,
                title=tiles.caption(r, j),
                min_pixels=min_pixels,
                contour=contour,
            )
        axes[r, 0].text(
            -0.08,
            0.5,
            tiles.concept_label(r),
            transform=axes[r, 0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=8,
        )
    return fig


def draw_atlas(
    tiles: ConceptTiles,
    *,
    columns: int = 8,
    alpha: float = 0.8,
    cmap: str = "inferno",
    tile: float = 1.1,
    min_pixels: int = 0,
    contour: bool = False,
) -> Figure:
    """One tile per concept of ``tiles``: its best image with its heatmap, titled by concept
    (and what it detects, when ``tiles.labels`` know it)."""
    n = len(tiles.concepts)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig = new_figure(tile * columns, tile * rows + 0.2)
    axes = fig.subplots(rows, columns, squeeze=False)
    for pos in range(rows * columns):
        ax = axes[pos // columns, pos % columns]
        if pos >= n or not tiles.images[pos]:
            ax.set_axis_off()
            continue
        overlay(
            ax,
            tiles.images[pos][0],
            tiles.heat[pos][0],
            alpha=alpha,
            cmap=cmap,
            title=tiles.concept_label(pos, prefix="c"),
            min_pixels=min_pixels,
            contour=contour,
        )
    return fig


def _tiles(
    model: VisionModel,
    layer: str | int,
    sae: SAE,
    images: Images,
    top: TopImages | None,
    concepts: Sequence[int] | None,
    n: int,
    n_concepts: int,
    rank: str,
    batch_size: int,
    encode_options: dict[str, Any] | None,
    progress: bool,
) -> ConceptTiles:
    if top is None:
        top = top_activating_images(
            model,
            layer,
            sae,
            images,
            concepts,
            n=n,
            batch_size=batch_size,
            encode_options=encode_options,
            progress=progress,
        )
    chosen = list(concepts) if concepts is not None else top.rank(rank, n_concepts)
    return concept_tiles(
        model,
        layer,
        sae,
        images,
        top,
        chosen,
        n=n,
        batch_size=batch_size,
        encode_options=encode_options,
    )


def plot_top_images(
    model: VisionModel,
    layer: str | int,
    sae: SAE,
    images: Images,
    concepts: Sequence[int] | None = None,
    *,
    top: TopImages | None = None,
    n: int = 6,
    n_concepts: int = 8,
    rank: str = "mass",
    batch_size: int = 16,
    encode_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> Figure:
    """Top-activating images of concepts with their heatmaps, a row per concept.

    Args:
        images: the pool searched (a (N, C, H, W) tensor, a folder, a Dataset, PIL images).
        concepts: concepts to draw (default: the ``n_concepts`` best by ``rank``, see
            `TopImages.rank`).
        top: a precomputed `top_activating_images` result over the same ``images``.
        n: images per concept.
    """
    tiles = _tiles(
        model,
        layer,
        sae,
        images,
        top,
        concepts,
        n,
        n_concepts,
        rank,
        batch_size,
        encode_options,
        progress,
    )
    return draw_top_images(tiles)


def plot_concept_atlas(
    model: VisionModel,
    layer: str | int,
    sae: SAE,
    images: Images,
    concepts: Sequence[int] | None = None,
    *,
    top: TopImages | None = None,
    n_concepts: int = 32,
    columns: int = 8,
    rank: str = "mass",
    batch_size: int = 16,
    encode_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> Figure:
    """Many concepts at a glance: a tile per concept with its best image and heatmap.

    ``concepts`` defaults to the ``n_concepts`` best by ``rank`` (see `TopImages.rank`).
    """
    tiles = _tiles(
        model,
        layer,
        sae,
        images,
        top,
        concepts,
        1,
        n_concepts,
        rank,
        batch_size,
        encode_options,
        progress,
    )
    return draw_atlas(tiles, columns=columns)
