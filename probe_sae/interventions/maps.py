"""Spatial concept maps: per-patch values (codes, attributions) folded into the patch grid.

A ViT layer holds ``n_prefix`` special tokens and then the ``h × w`` patch tokens in row-major
order (Dosovitskiy et al. 2021); a convolutional layer's (B, C, h, w) output is flattened the
same way by the hooks. Folding puts patch token ``n_prefix + i·w + j`` at grid cell ``(i, j)``,
which is how SAE concept activations are drawn over images (e.g. Fel et al. 2025, Fig. 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from probe_sae import hooks
from probe_sae.hooks import LayerSpec
from probe_sae.interventions.splice import check_width
from probe_sae.models import VisionModel
from probe_sae.models.images import ImageBatch
from probe_sae.models.runner import Where
from probe_sae.saes import SAE


@dataclass(frozen=True)
class PatchGrid:
    """Where a layer's patch tokens sit: positions ``patch_index`` (h·w,) in its token axis,
    row-major over ``grid = (h, w)``."""

    grid: tuple[int, int]
    patch_index: Tensor  # (h*w,) int64


def patch_grid(
    model: VisionModel, layer: LayerSpec, image_size: tuple[int, int], where: Where = "output"
) -> PatchGrid:
    """The patch grid of ``layer`` for inputs of ``image_size`` (H, W) pixels."""
    name = model.resolve(layer)
    site = model.site(name, where)
    if site.kind == "spatial":
        h, w = site.shape[1], site.shape[2]
        return PatchGrid((h, w), torch.arange(h * w))
    if site.kind != "tokens" or model.layout is None:
        raise ValueError(
            f"{name!r} of {model.name} has no patch grid (a {site.kind} value and "
            f"{'no' if model.layout is None else 'a'} token layout); concept maps need a ViT "
            f"block output or a convolutional feature map, or declare the layout with "
            f"probe_sae.wrap(module, token_layout=TokenLayout(...))."
        )
    layout = model.layout.for_image_size(*image_size)
    index = model.token_indices("patches", site, image_size)
    if index is None:  # pragma: no cover - "patches" always resolves to positions
        index = torch.arange(layout.n_prefix, layout.n_tokens)
    return PatchGrid(layout.grid, index)


def fold_patches(values_BPX: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, h·w, X) per-patch values in row-major order -> (B, X, h, w) maps."""
    batch, n_patches, width = values_BPX.shape
    h, w = grid
    if n_patches != h * w:
        raise ValueError(
            f"{n_patches} patch values cannot fill a {h}×{w} grid; pass the patch tokens only "
            f"(tokens='patches') of a layer with that grid."
        )
    return values_BPX.transpose(1, 2).reshape(batch, width, h, w)


def upsample(maps_BXhw: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Maps (B, X, h, w) resized to image ``size`` (H, W) for drawing over the image."""
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps_BXhw, size=size, mode=mode, **kwargs)


def pixel_mask_to_grid(mask_BHW: Tensor, grid: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """(B, H, W) pixel masks -> (B, h, w) bool patch masks: a patch is in the mask when at least
    ``threshold`` of its pixels are (area pooling; ``threshold=0`` means any pixel)."""
    if mask_BHW.ndim != 3:
        raise ValueError(f"pixel masks must be (B, H, W), got shape {tuple(mask_BHW.shape)}.")
    cover = F.adaptive_avg_pool2d(mask_BHW[:, None].float(), grid)[:, 0]
    return cover > threshold if threshold > 0 else cover > 0


@torch.no_grad()
def concept_maps(
    model: VisionModel,
    layer: LayerSpec,
    sae: SAE,
    images: ImageBatch,
    concepts: int | list[int] | Tensor | None = None,
    *,
    size: tuple[int, int] | None = None,
    encode_options: dict[str, Any] | None = None,
) -> Tensor:
    """Concept activation maps: the SAE codes of ``layer``'s patch tokens over the patch grid.

    Args:
        images: a (B, C, H, W) preprocessed batch or PIL images.
        concepts: concept indices to keep (default: all ``n_concepts``).
        size: resize the maps to (H, W) pixels (bilinear); default the patch grid.
        encode_options: passed to ``sae.encode`` (e.g. ``{"k": 8}`` for an MP-SAE).

    Returns:
        (B, n_selected, h, w) codes, float32 (``(B, n, H, W)`` with ``size``).
    """
    name = check_width(model, layer, sae)
    pixels = model.to_pixels(images)
    patches = patch_grid(model, name, (pixels.shape[-2], pixels.shape[-1]))
    got = hooks.capture(model, pixels, name, tokens=patches.patch_index)[name]
    param = next(sae.parameters())
    codes_NC = sae.encode(
        got.acts.to(device=param.device, dtype=param.dtype), **(encode_options or {})
    )
    codes_BPC = codes_NC.view(got.n_images, got.tokens_per_image, sae.n_concepts)
    if concepts is not None:
        index = torch.as_tensor(concepts, dtype=torch.long, device=codes_BPC.device).reshape(-1)
        if bool(((index < 0) | (index >= sae.n_concepts)).any()):
            raise ValueError(
                f"concepts {index.tolist()} out of range for an SAE of {sae.n_concepts} concepts."
            )
        codes_BPC = codes_BPC.index_select(2, index)
    maps = fold_patches(codes_BPC.float(), patches.grid)
    return upsample(maps, size) if size is not None else maps
