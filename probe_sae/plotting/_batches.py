"""Reading user images in batches: raw items for display, model pixels for encoding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from probe_sae.data.images import ImageSource
from probe_sae.models import VisionModel


def read_items(source: ImageSource, indices: Sequence[int]) -> list[Any]:
    """The raw images at ``indices`` (tensors or PIL images), in that order."""
    if isinstance(source.__dict__.get("images"), Tensor):  # TensorImages: index directly
        return list(source.images[torch.as_tensor(list(indices), dtype=torch.long)])
    out = []
    for i in indices:
        got = source.read(int(i), 1)
        if not got or got[0] is None:
            raise ValueError(f"image {i} could not be read from {type(source).__name__}.")
        out.append(got[0])
    return out


def to_model_pixels(model: VisionModel, items: list[Any]) -> Tensor:
    """(B, C, H, W) pixels for ``model`` from raw tensors (stacked) or PIL images (preprocessed)."""
    if all(isinstance(im, Tensor) for im in items):
        return model.to_pixels(torch.stack(items))
    return model.to_pixels(list(items))


def iter_batches(source: ImageSource, batch_size: int) -> Iterator[tuple[int, list[Any]]]:
    """(start, raw images) batches over the whole source; unreadable images are dropped."""
    start = 0
    while True:
        got = source.read(start, batch_size)
        if not got:
            return
        yield start, got
        start += len(got)
        if len(got) < batch_size:
            return
