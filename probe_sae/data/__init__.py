"""Image sources: folders, tensors, ``Dataset``s, iterables, Hugging Face ``datasets``,
WebDataset shards and labelled folders, each rank's part of them, and the loader that reads them
ahead of the model. Raw images (PIL, or uint8 tensors) go through the model's own
preprocessing; float tensors are taken as preprocessed pixels, and raw [0, 255] floats, empty
sources and non-images are refused with the fix (:mod:`probe_sae.data.pixels`). Known labels
come as (N, K) presence with class names (:class:`ImageLabels`). ``datasets`` and
``webdataset`` are optional (``pip install "probe_sae[datasets]"``), imported only when used.
Everything on the far side of the hooks lives in :mod:`probe_sae.stream`."""

from probe_sae.data.hf import HFImages, HFIterableImages, hf_images
from probe_sae.data.images import (
    DatasetImages,
    ImageFolder,
    Images,
    ImageSource,
    IterableImages,
    TensorImages,
    image_source,
)
from probe_sae.data.labelled import ImageLabels, LabelledFolder, image_labels, label_presence
from probe_sae.data.sharding import ShardedImages, shard_images
from probe_sae.data.wds import WebDatasetImages

__all__ = [
    "DatasetImages",
    "HFImages",
    "HFIterableImages",
    "ImageFolder",
    "ImageLabels",
    "ImageSource",
    "Images",
    "IterableImages",
    "LabelledFolder",
    "ShardedImages",
    "TensorImages",
    "WebDatasetImages",
    "hf_images",
    "image_labels",
    "image_source",
    "label_presence",
    "shard_images",
]
