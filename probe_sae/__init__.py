"""probe_sae: sparse autoencoders on live layers of vision models."""

__version__ = "0.1.0.dev0"

from probe_sae.saes import (
    MPSAE,
    SAE,
    ArchetypalDictionary,
    BatchTopKSAE,
    FreeDictionary,
    JumpReLUSAE,
    ReLUSAE,
    SAEFormatError,
    SAEOutput,
    SparseCodes,
    TopKSAE,
    available_families,
    build_sae,
    kmeans,
    load_sae,
)

__all__ = [
    "MPSAE",
    "SAE",
    "ArchetypalDictionary",
    "BatchTopKSAE",
    "FreeDictionary",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAEFormatError",
    "SAEOutput",
    "SparseCodes",
    "TopKSAE",
    "__version__",
    "available_families",
    "build_sae",
    "kmeans",
    "load_sae",
]
