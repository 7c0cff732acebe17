"""Concept heatmaps over images: an SAE's patch codes folded into the patch grid, upsampled to
the image and drawn over it (as in Fel et al. 2025, Fig. 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from probe_sae.data.images import Images, image_source
from probe_sae.interventions.maps import concept_maps, upsample
from probe_sae.models import VisionModel
from probe_sae.plotting._batches import read_items, to_model_pixels
from probe_sae.plotting._display import display_image, new_figure, overlay
from probe_sae.saes import SAE


def plot_maps(
    images: Sequence[Any] | Tensor,
    maps_BXhw: Tensor,
    *,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    show_image: bool = True,
    alpha: float = 0.8,
    cmap: str = "inferno",
    shared_scale: bool = False,
    tile: float = 1.6,
) -> Figure:
    """Draw maps over images: a row per image, a column per map (plus the plain image first).

    Args:
        images: B images (a (B, C, H, W) tensor or a list of tensors / PIL images); shown as
            given (see `display_image`).
        maps_BXhw: (B, X, h, w) non-negative maps (codes, attributions); upsampled
            bilinearly to each image's (H, W).
        titles: X column titles.
        shared_scale: one colour scale per column (over all rows) instead of per tile.

    Returns:
        A ``Figure``; the heat layer of tile (b, x) is ``ax.images[-1]`` labelled ``"heatmap"``.
    """
    if maps_BXhw.ndim != 4:
        raise ValueError(f"maps must be (B, X, h, w), got shape {tuple(maps_BXhw.shape)}.")
    n_images, n_maps = maps_BXhw.shape[:2]
    if len(images) != n_images:
        raise ValueError(
            f"{len(images)} images for {n_images} rows of maps; give one image per row."
        )
    shown = [display_image(images[b]) for b in range(n_images)]
    size = shown[0].shape[:2]
    if any(s.shape[:2] != size for s in shown):
        shown = [display_image(images[b], size) for b in range(n_images)]
    heat = upsample(maps_BXhw.detach().float().cpu(), size).clamp_min(0).numpy()
    col_max = heat.max(axis=(0, 2, 3)) if shared_scale else [None] * n_maps
    offset = int(show_image)
    fig = new_figure(tile * (n_maps + offset), tile * n_images + 0.3)
    axes = fig.subplots(n_images, n_maps + offset, squeeze=False)
    for b in range(n_images):
        if show_image:
            overlay(axes[b, 0], shown[b], None, title="image" if b == 0 else None)
            if row_labels is not None:
                axes[b, 0].set_title(row_labels[b], fontsize=7)
        for x in range(n_maps):
            title = (titles[x] if titles is not None else f"map {x}") if b == 0 else None
            overlay(
                axes[b, x + offset],
                shown[b],
                heat[b, x],
                alpha=alpha,
                cmap=cmap,
                vmax=col_max[x],
                title=title,
            )
    return fig


def plot_concept_heatmaps(
    model: VisionModel,
    layer: str | int,
    sae: SAE,
    images: Images,
    concepts: int | Sequence[int],
    *,
    max_images: int = 8,
    alpha: float = 0.8,
    cmap: str = "inferno",
    shared_scale: bool = True,
    encode_options: dict[str, Any] | None = None,
) -> Figure:
    """Heatmaps of ``concepts`` over up to ``max_images`` images (rows) at ``layer`` of ``model``.

    Args:
        images: a (B, C, H, W) tensor, PIL images, a folder or a Dataset (first
            ``max_images`` are drawn).
        concepts: concept indices, one column each.
        shared_scale: one colour scale per concept over all images (compare images), else per
            tile.

    Returns:
        A ``Figure``: column 0 the image, then one heat tile per concept (``ax.images[-1]``,
        the (H, W) codes upsampled from the patch grid).
    """
    index = [int(c) for c in np.atleast_1d(np.asarray(concepts))]
    source = image_source(images)
    count = min(max_images, source.length if source.length is not None else max_images)
    items = read_items(source, range(count))
    pixels = to_model_pixels(model, items)
    maps = concept_maps(model, layer, sae, pixels, index, encode_options=encode_options)
    size = (pixels.shape[-2], pixels.shape[-1])
    shown = [torch.from_numpy(display_image(im, size)).permute(2, 0, 1) for im in items]
    return plot_maps(
        shown,
        maps,
        titles=[f"concept {c}" for c in index],
        alpha=alpha,
        cmap=cmap,
        shared_scale=shared_scale,
    )
