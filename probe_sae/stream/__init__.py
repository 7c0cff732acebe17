"""Activations on the far side of the hooks: the live :class:`ActivationStream`, token sources
and the on-disk activation cache. All of them serve shuffled batches of tokens to the trainer."""

from probe_sae.stream.activations import ActivationStream
from probe_sae.stream.cache import CachedTokens, read_manifest, write_cache
from probe_sae.stream.config import StreamConfig
from probe_sae.stream.tokens import TensorTokenSource, TokenSource

__all__ = [
    "ActivationStream",
    "CachedTokens",
    "StreamConfig",
    "TensorTokenSource",
    "TokenSource",
    "read_manifest",
    "write_cache",
]
