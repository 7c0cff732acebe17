"""SAE families sharing one contract (see :mod:`probe_sae.saes.base`)."""

from probe_sae.saes.archetypal import ArchetypalDictionary
from probe_sae.saes.base import SAE, SAEOutput
from probe_sae.saes.batchtopk import BatchTopKSAE
from probe_sae.saes.dictionary import Dictionary, FreeDictionary
from probe_sae.saes.factory import available_families, build_sae
from probe_sae.saes.io import SAEFormatError, load_sae, save_sae
from probe_sae.saes.jumprelu import JumpReLUSAE
from probe_sae.saes.kmeans import kmeans
from probe_sae.saes.mp import MPSAE
from probe_sae.saes.relu import ReLUSAE
from probe_sae.saes.sparse import SparseCodes
from probe_sae.saes.topk import TopKSAE

__all__ = [
    "MPSAE",
    "SAE",
    "ArchetypalDictionary",
    "BatchTopKSAE",
    "Dictionary",
    "FreeDictionary",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAEFormatError",
    "SAEOutput",
    "SparseCodes",
    "TopKSAE",
    "available_families",
    "build_sae",
    "kmeans",
    "load_sae",
    "save_sae",
]
