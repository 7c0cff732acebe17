"""Image sources: folders, tensors, ``Dataset``s, iterables, and the loader that reads them
ahead of the model. Raw images (PIL, or uint8 tensors) go through the model's own
preprocessing; float tensors are taken as preprocessed pixels, and raw [0, 255] floats, empty
sources and non-images are refused with the fix (:mod:`probe_sae.data.pixels`). Everything on
the far side of the hooks lives in :mod:`probe_sae.stream`."""

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
