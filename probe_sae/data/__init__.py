"""Data sources: images, synthetic data, token sources, activation streams and caches."""

from probe_sae.data.cache import CachedTokens, read_manifest, write_cache
from probe_sae.data.images import (
    DatasetImages,
    ImageFolder,
    ImageSource,
    IterableImages,
    TensorImages,
    image_source,
)
from probe_sae.data.stream import ActivationStream
from probe_sae.data.tokens import TensorTokenSource, TokenSource
from probe_sae.data.toy_activations import SparseMixture, sparse_mixture

__all__ = [
    "ActivationStream",
    "CachedTokens",
    "DatasetImages",
    "ImageFolder",
    "ImageSource",
    "IterableImages",
    "SparseMixture",
    "TensorImages",
    "TensorTokenSource",
    "TokenSource",
    "image_source",
    "read_manifest",
    "sparse_mixture",
    "write_cache",
]
