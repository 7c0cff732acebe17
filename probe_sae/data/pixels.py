"""One image as a model takes it, and batches of them, with errors that say what to do.

Image sources hand out PIL images or (C, H, W) tensors. A model takes PIL images (its own
preprocessing resizes, crops and normalises them) or float pixels that are already preprocessed.
Here:

* integer tensors (uint8, or any integer dtype with values in [0, 255]) are raw images: they
  become RGB PIL images and go through the model's preprocessing, like files on disk;
* float tensors pass as preprocessed pixels, after a check that they are not raw [0, 255]
  values (refused, not guessed: ``x / 255`` is not the model's normalisation) and are finite;
* anything else (a path, a NumPy array) is refused with the conversion to make.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

#: Preprocessed pixels stay far below this (ImageNet / CLIP normalisation gives |x| < 3);
#: a float image above it holds raw [0, 255] values.
RAW_PIXEL_THRESHOLD = 10.0

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def is_pil(image: object) -> bool:
    """Whether ``image`` is a PIL image (``False`` when Pillow is not installed)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow ships with torchvision
        return False
    return isinstance(image, Image.Image)


def check_integer_images(images: Tensor, what: str = "the image tensor") -> None:
    """Raise unless integer ``images`` (..., C, H, W) hold 1, 3 or 4 channels of [0, 255]."""
    if images.dtype == torch.bool:
        raise ValueError(f"{what} is boolean; give uint8 images (0..255) or float pixels")
    if images.shape[-3] not in _MODES:
        raise ValueError(
            f"{what} holds integer images with {images.shape[-3]} channels in shape "
            f"{tuple(images.shape)}; raw images are channels-first (C, H, W) with C = 1, 3 or 4: "
            "permute (H, W, C) images with x.permute(0, 3, 1, 2)"
        )
    if images.dtype != torch.uint8 and images.numel():
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{what} holds integer values in [{low}, {high}]; raw images are 0..255 "
                "(convert with x.clamp(0, 255).to(torch.uint8)), preprocessed pixels are floats"
            )


def check_float_pixels(pixels: Tensor, what: str = "the image tensor") -> None:
    """Raise when float ``pixels`` are not finite or look like raw [0, 255] images."""
    if not pixels.numel():
        return
    finite = torch.isfinite(pixels)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{what} holds {bad} NaN or infinite pixel values; fix or drop those images"
        )
    high = float(pixels.detach().abs().amax())
    if high > RAW_PIXEL_THRESHOLD:
        raise ValueError(
            f"{what} holds float values up to {high:g}: raw [0, 255] pixels, but models take "
            "float pixels that are already preprocessed (in [0, 1] before normalisation). "
            "Pass x.to(torch.uint8) (raw images, preprocessed by the model), PIL images, or "
            "model.preprocess(images); or divide by 255 if [0, 1] pixels are what the model takes"
        )


def to_pil(image_CHW: Tensor) -> PILImage:
    """An integer (C, H, W) image with values in [0, 255] as an RGB PIL image."""
    from PIL import Image

    check_integer_images(image_CHW, "an integer image")
    array_HWC = image_CHW.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy()
    mode = _MODES[image_CHW.shape[0]]
    return Image.fromarray(array_HWC[..., 0] if mode == "L" else array_HWC, mode).convert("RGB")


def model_input(image: Any, index: int | None = None) -> Tensor | PILImage:
    """One image as a model takes it: a PIL image (raw images, for the model's preprocessing)
    or a float (C, H, W) tensor of preprocessed pixels."""
    what = "an image" if index is None else f"image {index} of the batch"
    if is_pil(image):
        return image
    if isinstance(image, Tensor):
        if image.ndim != 3:
            raise ValueError(
                f"{what} is a tensor of shape {tuple(image.shape)}; one image is (C, H, W)"
            )
        if image.is_floating_point():
            return image
        if image.is_complex():
            raise ValueError(f"{what} is a complex tensor; give uint8 images or float pixels")
        return to_pil(image)
    kind = type(image).__name__
    fix = (
        "PIL.Image.fromarray(array) (uint8, (H, W, C))"
        if hasattr(image, "__array__")
        else "PIL.Image.open(path).convert('RGB'), or pass the folder path as the images"
        if isinstance(image, str) or hasattr(image, "__fspath__")
        else "PIL images or (C, H, W) tensors"
    )
    raise TypeError(f"{what} is a {kind}, not a PIL image or a (C, H, W) tensor: give {fix}")


def to_batch(images: list[Any], preprocess: Callable[[list[Any]], Tensor]) -> Tensor:
    """A (B, C, H, W) batch from images (see `model_input`): float tensors stacked, PIL images
    (and integer tensors, as PIL images) through the model's ``preprocess``."""
    if not images:
        raise ValueError("no images to put in a batch: give at least one image")
    items = [model_input(im, i) for i, im in enumerate(images)]
    raw = [i for i, im in enumerate(items) if not isinstance(im, Tensor)]
    for i, im in enumerate(items):
        if isinstance(im, Tensor):
            check_float_pixels(im, f"image {i} of the batch")
    if raw:
        preprocessed = preprocess([items[i] for i in raw])
        for i, pixels in zip(raw, preprocessed, strict=True):
            items[i] = pixels
    shapes = {tuple(im.shape) for im in items}
    if len(shapes) > 1:
        raise ValueError(
            f"the images of one batch have different shapes {sorted(shapes)}: give PIL images "
            "(the model's preprocessing resizes them) or tensors of one size"
        )
    return torch.stack(items)
