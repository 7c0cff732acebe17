"""Building SAEs by family name, and rebuilding them from a saved config."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probe_sae.saes.archetypal import ArchetypalDictionary
from probe_sae.saes.base import SAE
from probe_sae.saes.batchtopk import BatchTopKSAE
from probe_sae.saes.dictionary import Dictionary, FreeDictionary
from probe_sae.saes.jumprelu import JumpReLUSAE
from probe_sae.saes.mp import MPSAE
from probe_sae.saes.relu import ReLUSAE
from probe_sae.saes.topk import TopKSAE

FAMILIES: dict[str, type[SAE]] = {
    cls.family: cls for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MPSAE)
}
#: Archetypal SAEs sit on top of an encoder family (the paper uses TopK).
ARCHETYPAL = {"asae": 0.0, "rasae": 1.0}
ARCHETYPAL_ENCODERS = ("topk", "batchtopk", "jumprelu", "relu")


def available_families() -> list[str]:
    """Names accepted by :func:`build_sae`."""
    return [*FAMILIES, *ARCHETYPAL]


def build_sae(
    family: str,
    d_model: int,
    n_concepts: int,
    *,
    candidates: Tensor | None = None,
    delta: float | None = None,
    encoder: str = "topk",
    seed: int | None = None,
    **hyperparameters: Any,
) -> SAE:
    """Build an SAE by name.

    Args:
        family: ``"relu" | "topk" | "batchtopk" | "jumprelu" | "mp" | "asae" | "rasae"``.
        candidates: (n_candidates, d) archetypal candidate points, required for ``asae`` /
            ``rasae`` (e.g. ``kmeans(acts, n_clusters)``; the paper uses 32k centroids).
        delta: RA-SAE relaxation δ (default 1.0 for ``rasae``; ``asae`` is δ = 0).
        encoder: encoder family under an archetypal dictionary (the paper uses ``"topk"``).
        seed: seeds the random initialisation of a free dictionary (archetypal atoms start
            at the candidates and need no seed).
        hyperparameters: the family's own (``k``, ``l1_coeff``, ``l0_coeff``, ...).

    Example: ``build_sae("rasae", 768, 6144, candidates=kmeans(acts, 8192), k=32)``.
    """
    name = family.lower()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    if name in ARCHETYPAL:
        if candidates is None:
            raise ValueError(
                f"{name} needs candidates=: archetypal atoms are convex combinations of candidate "
                "points, e.g. candidates=probe_sae.kmeans(acts, n_clusters=...)"
            )
        if encoder not in ARCHETYPAL_ENCODERS:
            raise ValueError(f"encoder must be one of {ARCHETYPAL_ENCODERS}, got {encoder!r}")
        if name == "asae" and delta not in (None, 0, 0.0):
            raise ValueError("asae has delta = 0 by definition; use family='rasae' for delta > 0")
        dictionary: Dictionary = ArchetypalDictionary(
            candidates, n_concepts, ARCHETYPAL[name] if delta is None else delta
        )
        cls = FAMILIES[encoder]
    elif name in FAMILIES:
        cls = FAMILIES[name]
        dictionary = FreeDictionary(
            n_concepts, d_model, unit_norm=cls.needs_unit_norm, generator=generator
        )
    else:
        raise ValueError(f"unknown SAE family {family!r}; choose one of {available_families()}")
    return cls(d_model, n_concepts, dictionary=dictionary, **hyperparameters)


def _dictionary_from_config(cfg: dict[str, Any], n_concepts: int, d_model: int) -> Dictionary:
    kind = cfg.get("kind")
    if kind == "free":
        return FreeDictionary(n_concepts, d_model, unit_norm=bool(cfg["unit_norm"]))
    if kind == "archetypal":
        placeholder = torch.zeros(int(cfg["n_candidates"]), d_model)
        return ArchetypalDictionary(placeholder, n_concepts, float(cfg["delta"]))
    raise ValueError(f"unknown dictionary kind {kind!r} in the saved config")


def sae_from_config(cfg: dict[str, Any]) -> SAE:
    """An SAE with the architecture described by a saved config (weights not loaded)."""
    family = cfg.get("family")
    if family not in FAMILIES:
        raise ValueError(
            f"unknown SAE family {family!r} in the saved config; known: {list(FAMILIES)}"
        )
    d_model, n_concepts = int(cfg["d_model"]), int(cfg["n_concepts"])
    dictionary = _dictionary_from_config(cfg["dictionary"], n_concepts, d_model)
    return FAMILIES[family](
        d_model, n_concepts, dictionary=dictionary, **cfg.get("hyperparameters", {})
    )
