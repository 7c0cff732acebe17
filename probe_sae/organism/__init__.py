"""The model organism: a synthetic concept world and the small ViT trained on it.

* :mod:`probe_sae.organism.world`: collages of 16 known objects with their presence labels;
* :mod:`probe_sae.organism.model`: the ViT's architecture and weight files;
* :mod:`probe_sae.organism.train`: the script that trained it;
* :mod:`probe_sae.organism.load`: ``load_organism`` (shipped weights, else trained once).

``load_model("organism")`` finds it through the ``probe_sae.models`` entry point, which calls
:func:`register`.
"""

from __future__ import annotations

from typing import Any

import torch

from probe_sae.models import VisionModel, register_loader
from probe_sae.organism.load import load_organism
from probe_sae.organism.model import head_directions
from probe_sae.organism.world import KIND_NAMES, ConceptImages, generate

__all__ = [
    "KIND_NAMES",
    "ConceptImages",
    "generate",
    "head_directions",
    "load_organism",
    "register",
]


def _load(rest: str, device: torch.device | str = "cpu", **kwargs: Any) -> VisionModel:
    """``load_model("organism")`` (shipped weights), ``"organism:hard"`` (the organism of the
    hard world) or ``"organism:<folder>"`` (other weights)."""
    if rest == "hard":
        return load_organism(device, world="hard", **kwargs)
    return load_organism(device, path=rest or None, **kwargs)


def register() -> None:
    """Make ``load_model("organism")``, ``load_model("organism:hard")`` and
    ``load_model("organism:<folder>")`` available."""
    register_loader("organism", _load)


register()
