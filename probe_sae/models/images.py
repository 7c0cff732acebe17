"""Turning user images into the pixel batch a model expects, with errors that say what it expects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import Tensor

from probe_sae.data.images import is_pil

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: Batch-level preprocessing: a list of PIL images -> (B, C, H, W) float tensor.
Preprocess = Callable[[list[Any]], Tensor]

#: One batch for a model: a (B, C, H, W) float tensor already preprocessed (resized, cropped,
#: normalised), one PIL image, or a sequence of PIL images (preprocessed by the model's own
#: transforms).
ImageBatch: TypeAlias = "Tensor | PILImage | Sequence[PILImage]"


def per_image(transform: Callable[[Any], Tensor], mode: str | None = "RGB") -> Preprocess:
    """Batch preprocessing from a per-image transform (open_clip's and timm's transforms)."""

    def preprocess(images: list[Any]) -> Tensor:
        return torch.stack([transform(im.convert(mode) if mode else im) for im in images])

    return preprocess


@dataclass(frozen=True)
class InputSpec:
    """What pixel batches a model accepts.

    ``size`` is the (H, W) the model's preprocessing produces. With ``flexible`` the model also
    takes other sizes that are multiples of ``multiple`` (DINOv2 interpolates its position
    embeddings); otherwise the size must match exactly.
    """

    size: tuple[int, int]
    channels: int = 3
    flexible: bool = False
    multiple: tuple[int, int] = (1, 1)

    def describe(self) -> str:
        return f"{self.channels}×{self.size[0]}×{self.size[1]}"

    def check(self, pixels: Tensor, model_name: str) -> None:
        """Raise a ValueError naming what ``model_name`` expects when ``pixels`` does not fit."""
        if pixels.ndim != 4:
            extra = " (add the batch axis: x[None])" if pixels.ndim == 3 else ""
            raise ValueError(
                f"{model_name} takes a batch of images shaped (B, {self.describe().replace('×', ', ')}); "
                f"got a tensor of shape {tuple(pixels.shape)}{extra}."
            )
        if not pixels.is_floating_point():
            raise ValueError(
                f"{model_name} takes float pixel tensors that are already preprocessed "
                f"(resized, cropped, normalised); got dtype {pixels.dtype}. Pass PIL images, or "
                f"model.preprocess(images)."
            )
        _, c, h, w = pixels.shape
        if c != self.channels:
            fix = (
                "convert grayscale images with image.convert('RGB') or x.expand(-1, 3, -1, -1)"
                if c == 1 and self.channels == 3
                else f"give images with {self.channels} channels"
            )
            raise ValueError(
                f"{model_name} expects {self.channels}-channel images of {self.describe()} "
                f"(channels first, (B, C, H, W)); got {c} channels in shape {tuple(pixels.shape)}: {fix}."
            )
        if (h, w) == self.size:
            return
        if self.flexible:
            mh, mw = self.multiple
            if h % mh == 0 and w % mw == 0:
                return
            raise ValueError(
                f"{model_name} takes images whose height and width are multiples of its patch "
                f"size {mh}×{mw} (its preprocessing gives {self.size[0]}×{self.size[1]}); got "
                f"{h}×{w}. Pass PIL images (model.preprocess resizes them) or crop to a multiple."
            )
        raise ValueError(
            f"{model_name} expects images of {self.describe()}; got {c}×{h}×{w}. Pass PIL images "
            f"(model.preprocess resizes, crops and normalises them) or resize your tensors to "
            f"{self.size[0]}×{self.size[1]}."
        )


def to_pixels(
    images: ImageBatch,
    spec: InputSpec,
    preprocess: Preprocess | None,
    model_name: str,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> Tensor:
    """A checked (B, C, H, W) float batch on the model's device from a tensor batch or PIL images."""
    if is_pil(images):
        images = [images]
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)) and images and all(
        is_pil(im) for im in images
    ):
        if preprocess is None:
            raise ValueError(
                f"{model_name} has no preprocessing, so it cannot take PIL images; pass "
                f"preprocess= to probe_sae.wrap(), or give (B, C, H, W) float tensors."
            )
        pixels = preprocess(list(images))
    elif isinstance(images, Tensor):
        pixels = images
    else:
        raise TypeError(
            f"{model_name} takes a (B, C, H, W) float tensor or a list of PIL images; got "
            f"{type(images).__name__}."
        )
    spec.check(pixels, model_name)
    return pixels.to(device=device, dtype=dtype) if device is not None or dtype is not None else pixels


def measured_size(preprocess: Preprocess, side: int = 512) -> tuple[int, int]:
    """(H, W) that ``preprocess`` produces for a square image (resize + crop measured, not guessed)."""
    from PIL import Image

    pixels = preprocess([Image.new("RGB", (side, side))])
    return int(pixels.shape[-2]), int(pixels.shape[-1])
