"""Image sources: folders, tensors, ``Dataset``s, iterables, and the loader that reads them
ahead of the model. Everything on the far side of the hooks lives in :mod:`probe_sae.stream`."""

from probe_sae.data.images import (
    DatasetImages,
    ImageFolder,
    Images,
    ImageSource,
    IterableImages,
    TensorImages,
    image_source,
)

__all__ = [
    "DatasetImages",
    "ImageFolder",
    "ImageSource",
    "Images",
    "IterableImages",
    "TensorImages",
    "image_source",
]
