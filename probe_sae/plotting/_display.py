"""Images as people see them, and headless figures.

Models take preprocessed pixels (resized, cropped, often normalised); plots show the image the
user gave instead: a [0, 1] tensor as it is (the organism's synthetic collages), any other
tensor min-max scaled per image, and a PIL image resized on its shorter side and centre-cropped
to the model's input size (what CLIP / DINOv2 / SigLIP preprocessing does), so that patch maps
upsampled to that size lie over the right pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from probe_sae.models.images import is_pil

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from PIL.Image import Image as PILImage


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure not registered with pyplot (no global state; works headless and in Jupyter)."""
    return Figure(figsize=(max(width, 0.5), max(height, 0.5)), dpi=dpi, layout="constrained")


def display_image(image: Tensor | np.ndarray | PILImage, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image -> (H, W, 3) float array in [0, 1] for ``imshow``.

    Args:
        image: a (C, H, W) or (H, W) tensor / array, or a PIL image.
        size: (H, W) to resize a PIL image to (shorter side, then centre crop); tensors keep
            their size unless ``size`` differs, then they are resized bilinearly.
    """
    if is_pil(image):
        return _pil_to_array(image, size)
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    x = x.detach().float().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"an image must be (C, H, W) or (H, W), got shape {tuple(x.shape)}.")
    if x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(2, 0, 1)  # (H, W, C) arrays
    if x.shape[0] == 4:
        x = x[:3]
    if x.dtype == torch.uint8 or x.max() > 1.0 + 1e-6 or x.min() < -1e-6:
        lo, hi = x.min(), x.max()  # normalised or 0..255 pixels: min-max per image
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(
            x[None], size=size, mode="bilinear", align_corners=False
        )[0]
    x = x.clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).numpy()


def _pil_to_array(image: PILImage, size: tuple[int, int] | None) -> np.ndarray:
    image = image.convert("RGB")
    if size is not None:
        h, w = size
        scale = max(h / image.height, w / image.width)
        new = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
        image = image.resize(new, resample=3)  # bicubic
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        image = image.crop((left, top, left + w, top + h))
    return np.asarray(image, dtype=np.float32) / 255.0


def heat_limits(heat: np.ndarray, vmax: float | None) -> tuple[float, float]:
    """(0, vmax) for a non-negative activation map; ``vmax`` defaults to the map's maximum."""
    top = float(np.max(heat)) if vmax is None else float(vmax)
    return 0.0, top if top > 0 else 1.0


def upscale(image_HW3: np.ndarray, heat_HW: np.ndarray | None, min_pixels: int) -> tuple:
    """Repeat pixels (nearest neighbour, an integer factor) until the shorter side of
    ``image`` is at least ``min_pixels``; ``heat`` (same H, W) is repeated alike."""
    short = min(image_HW3.shape[:2])
    factor = -(-min_pixels // short) if short and min_pixels > short else 1
    if factor <= 1:
        return image_HW3, heat_HW
    big = np.repeat(np.repeat(image_HW3, factor, axis=0), factor, axis=1)
    if heat_HW is not None:
        heat_HW = np.repeat(np.repeat(np.asarray(heat_HW), factor, axis=0), factor, axis=1)
    return big, heat_HW


def overlay(
    ax: Axes,
    image_HW3: np.ndarray,
    heat_HW: np.ndarray | None,
    *,
    alpha: float = 0.8,
    cmap: str = "inferno",
    vmax: float | None = None,
    title: str | None = None,
    min_pixels: int = 0,
    contour: bool = False,
) -> None:
    """Draw ``image`` on ``ax`` and, over it, ``heat`` (same H, W) with transparency.

    The heat layer is the axes' last ``AxesImage`` and is labelled ``"heatmap"``
    (``ax.images[-1].get_array()`` gives the values back). ``min_pixels`` upsamples small
    images (nearest neighbour, see `upscale`) so they stay readable; ``contour`` outlines where
    the heat exceeds half of its scale, so a light ``alpha`` still shows the region.
    """
    image_HW3, heat_HW = upscale(image_HW3, heat_HW, min_pixels)
    ax.imshow(image_HW3, interpolation="bilinear")
    if heat_HW is not None:
        lo, hi = heat_limits(heat_HW, vmax)
        # opacity grows with the heat, so cold regions show the image untouched
        strength = np.clip((np.asarray(heat_HW, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
        layer = ax.imshow(
            heat_HW,
            cmap=cmap,
            alpha=alpha * np.sqrt(strength),
            vmin=lo,
            vmax=hi,
            interpolation="nearest",
        )
        layer.set_label("heatmap")
        if contour and float(np.max(heat_HW)) > lo + 0.5 * (hi - lo) > float(np.min(heat_HW)):
            ax.contour(heat_HW, levels=[lo + 0.5 * (hi - lo)], colors="cyan", linewidths=0.8)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)
