"""Data sources: images, synthetic data, token sources and activation streams."""

from probe_sae.data.tokens import TensorTokenSource, TokenSource
from probe_sae.data.toy_activations import SparseMixture, sparse_mixture

__all__ = ["SparseMixture", "TensorTokenSource", "TokenSource", "sparse_mixture"]
