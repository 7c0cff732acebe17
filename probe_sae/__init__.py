"""probe_sae: sparse autoencoders on live layers of vision models."""

__version__ = "0.1.0.dev0"

from probe_sae import hooks, interventions
from probe_sae.allocator import tune_cpu_allocator
from probe_sae.data import ActivationStream, CachedTokens, TensorTokenSource, write_cache
from probe_sae.interventions import attribute, concept_maps, splice, steer, steering_sweep
from probe_sae.metrics import EvalReport, FidelityReport, evaluate, spliced_fidelity
from probe_sae.models import LayerInfo, TokenLayout, VisionModel, load_model, register_loader, wrap
from probe_sae.models.organism import head_directions, load_organism
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
from probe_sae.train import SAESpec, SAETarget, TrainConfig, Trainer, TrainResult, train_sae

_LAZY = {"plotting": "probe_sae.plotting", "write_report": "probe_sae.report"}


def __getattr__(name: str):
    """``probe_sae.plotting`` and ``probe_sae.write_report`` import matplotlib on first use only."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if name == "plotting" else getattr(module, name)
    raise AttributeError(f"module 'probe_sae' has no attribute {name!r}")


__all__ = [
    "MPSAE",
    "SAE",
    "ActivationStream",
    "ArchetypalDictionary",
    "BatchTopKSAE",
    "CachedTokens",
    "EvalReport",
    "FidelityReport",
    "FreeDictionary",
    "JumpReLUSAE",
    "LayerInfo",
    "ReLUSAE",
    "SAEFormatError",
    "SAEOutput",
    "SAESpec",
    "SAETarget",
    "SparseCodes",
    "TensorTokenSource",
    "TokenLayout",
    "TopKSAE",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "VisionModel",
    "__version__",
    "attribute",
    "available_families",
    "build_sae",
    "concept_maps",
    "evaluate",
    "head_directions",
    "hooks",
    "interventions",
    "kmeans",
    "load_model",
    "load_organism",
    "load_sae",
    "plotting",
    "register_loader",
    "splice",
    "spliced_fidelity",
    "steer",
    "steering_sweep",
    "train_sae",
    "tune_cpu_allocator",
    "wrap",
    "write_cache",
    "write_report",
]
