"""SAE families sharing one contract (see :mod:`probe_sae.saes.base`), each with its typed
config (see :mod:`probe_sae.saes.config`)."""

from probe_sae.saes.archetypal import ArchetypalConfig, ArchetypalDictionary
from probe_sae.saes.base import SAE, SAEOutput
from probe_sae.saes.batchtopk import BatchTopKConfig, BatchTopKSAE
from probe_sae.saes.config import SAEConfig, registered_families
from probe_sae.saes.dictionary import Dictionary, FreeDictionary
from probe_sae.saes.factory import available_families, build_sae, family_config
from probe_sae.saes.io import SAEFormatError, SAESaveError, load_sae, save_sae
from probe_sae.saes.jumprelu import JumpReLUConfig, JumpReLUSAE
from probe_sae.saes.kmeans import kmeans
from probe_sae.saes.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from probe_sae.saes.mp import MPSAE, MPConfig
from probe_sae.saes.relu import ReLUConfig, ReLUSAE
from probe_sae.saes.saelens import SAELensConversionError, load_saelens, save_saelens
from probe_sae.saes.sparse import SparseCodes
from probe_sae.saes.topk import TopKConfig, TopKSAE

__all__ = [
    "MPSAE",
    "SAE",
    "ArchetypalConfig",
    "ArchetypalDictionary",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "Dictionary",
    "FreeDictionary",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "MPConfig",
    "MatryoshkaConfig",
    "MatryoshkaSAE",
    "ReLUConfig",
    "ReLUSAE",
    "SAEConfig",
    "SAEFormatError",
    "SAELensConversionError",
    "SAEOutput",
    "SAESaveError",
    "SparseCodes",
    "TopKConfig",
    "TopKSAE",
    "available_families",
    "build_sae",
    "family_config",
    "kmeans",
    "load_sae",
    "load_saelens",
    "registered_families",
    "save_sae",
    "save_saelens",
]
