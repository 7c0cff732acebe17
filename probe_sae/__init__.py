"""probe_sae: sparse autoencoders on live layers of vision models."""

__version__ = "0.1.0.dev0"
