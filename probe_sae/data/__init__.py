"""Data sources: images, synthetic data, activation streams."""

from probe_sae.data.toy_activations import SparseMixture, sparse_mixture

__all__ = ["SparseMixture", "sparse_mixture"]
