"""probe_sae: sparse autoencoders on live layers of vision models.

Data flows one way, and so do imports: a module imports only from modules to its left.

    constants, config, _atomic, allocator   leaves (no imports from the package)
    → hub             the Hugging Face Hub: hf: names through the cache, offline-aware
    → data            image sources: folders, tensors, Datasets, iterables, loaders
    → models          load_model / wrap: hookable VisionModel, token layout, layers
    → organism        the synthetic concept world and the small ViT trained on it
    → hooks           capture and intervention primitives (nnsight)
    → stream          ActivationStream, token sources, the on-disk cache
    → saes            SAE families, their configs, dictionaries, save / load
    → metrics         reconstruction, sparsity, dictionary geometry (pure tensor maths)
    → train           the online trainer, schedules, dead latents, checkpoints
    → interventions   splice, steer, attribute, concept maps, spliced fidelity
    → plotting        heatmaps, top images, curves
    → run, report, browser, bench, demo, cli   the applications (run: a training run as one config)

``tests/test_layout.py`` reads every module's imports and enforces this order.

``import probe_sae`` is cheap: every name below is imported on first use, so torch, nnsight,
transformers, open_clip, timm and matplotlib load only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from probe_sae.constants import __version__

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # models and the organism
    "LayerInfo": "probe_sae.models",
    "TokenLayout": "probe_sae.models",
    "VisionModel": "probe_sae.models",
    "load_model": "probe_sae.models",
    "register_loader": "probe_sae.models",
    "wrap": "probe_sae.models",
    "head_directions": "probe_sae.organism",
    "load_organism": "probe_sae.organism",
    # streams
    "ActivationStream": "probe_sae.stream",
    "CachedTokens": "probe_sae.stream",
    "StreamConfig": "probe_sae.stream",
    "TensorTokenSource": "probe_sae.stream",
    "write_cache": "probe_sae.stream",
    # SAEs
    "MPSAE": "probe_sae.saes",
    "SAE": "probe_sae.saes",
    "ArchetypalConfig": "probe_sae.saes",
    "ArchetypalDictionary": "probe_sae.saes",
    "BatchTopKConfig": "probe_sae.saes",
    "BatchTopKSAE": "probe_sae.saes",
    "FreeDictionary": "probe_sae.saes",
    "JumpReLUConfig": "probe_sae.saes",
    "JumpReLUSAE": "probe_sae.saes",
    "MPConfig": "probe_sae.saes",
    "MatryoshkaConfig": "probe_sae.saes",
    "MatryoshkaSAE": "probe_sae.saes",
    "ReLUConfig": "probe_sae.saes",
    "ReLUSAE": "probe_sae.saes",
    "SAEConfig": "probe_sae.saes",
    "SAEFormatError": "probe_sae.saes",
    "SAESaveError": "probe_sae.saes",
    "SAEOutput": "probe_sae.saes",
    "SparseCodes": "probe_sae.saes",
    "TopKConfig": "probe_sae.saes",
    "TopKSAE": "probe_sae.saes",
    "available_families": "probe_sae.saes",
    "build_sae": "probe_sae.saes",
    "family_config": "probe_sae.saes",
    "kmeans": "probe_sae.saes",
    "load_sae": "probe_sae.saes",
    # metrics
    "EvalReport": "probe_sae.metrics",
    "evaluate": "probe_sae.metrics",
    # training
    "CheckpointError": "probe_sae.train",
    "CheckpointWarning": "probe_sae.train",
    "SAETarget": "probe_sae.train",
    "TrainConfig": "probe_sae.train",
    "TrainResult": "probe_sae.train",
    "Trainer": "probe_sae.train",
    "train_sae": "probe_sae.train",
    # interventions
    "FidelityReport": "probe_sae.interventions",
    "attribute": "probe_sae.interventions",
    "concept_maps": "probe_sae.interventions",
    "splice": "probe_sae.interventions",
    "spliced_fidelity": "probe_sae.interventions",
    "steer": "probe_sae.interventions",
    "steering_sweep": "probe_sae.interventions",
    # applications and utilities
    "write_report": "probe_sae.report",
    "browse": "probe_sae.browser",
    "tune_cpu_allocator": "probe_sae.allocator",
}
#: subpackages reachable as attributes (``probe_sae.plotting.plot_maps(...)``)
_SUBMODULES = ("hooks", "interventions", "plotting", "organism")


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"probe_sae.{name}")
    else:
        raise AttributeError(f"module 'probe_sae' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])


__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from probe_sae import hooks, interventions, organism, plotting
    from probe_sae.allocator import tune_cpu_allocator
    from probe_sae.browser import browse
    from probe_sae.interventions import (
        FidelityReport,
        attribute,
        concept_maps,
        splice,
        spliced_fidelity,
        steer,
        steering_sweep,
    )
    from probe_sae.metrics import EvalReport, evaluate
    from probe_sae.models import (
        LayerInfo,
        TokenLayout,
        VisionModel,
        load_model,
        register_loader,
        wrap,
    )
    from probe_sae.organism import head_directions, load_organism
    from probe_sae.report import write_report
    from probe_sae.saes import (
        MPSAE,
        SAE,
        ArchetypalConfig,
        ArchetypalDictionary,
        BatchTopKConfig,
        BatchTopKSAE,
        FreeDictionary,
        JumpReLUConfig,
        JumpReLUSAE,
        MatryoshkaConfig,
        MatryoshkaSAE,
        MPConfig,
        ReLUConfig,
        ReLUSAE,
        SAEConfig,
        SAEFormatError,
        SAEOutput,
        SAESaveError,
        SparseCodes,
        TopKConfig,
        TopKSAE,
        available_families,
        build_sae,
        family_config,
        kmeans,
        load_sae,
    )
    from probe_sae.stream import (
        ActivationStream,
        CachedTokens,
        StreamConfig,
        TensorTokenSource,
        write_cache,
    )
    from probe_sae.train import (
        CheckpointError,
        CheckpointWarning,
        SAETarget,
        TrainConfig,
        Trainer,
        TrainResult,
        train_sae,
    )
