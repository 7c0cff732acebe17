"""Building SAEs from their configs or by family name, and rebuilding them from a saved config.

Family names are the registered configs' (``relu``, ``topk``, ``batchtopk``, ``jumprelu``,
``mp``, ``matryoshka``) and names for archetypal SAEs (Fel et al. 2025): ``asae`` and ``rasae``
are a linear-encoder family (TopK, as in the paper, unless ``encoder=`` says otherwise) over an
archetypal dictionary with δ = 0 and δ > 0; ``matryoshka_asae`` and ``matryoshka_rasae`` are
the same over a Matryoshka SAE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from probe_sae.config import ConfigError, config_fields, from_dict
from probe_sae.saes.archetypal import ArchetypalConfig, ArchetypalDictionary
from probe_sae.saes.base import SAE
from probe_sae.saes.batchtopk import BatchTopKSAE
from probe_sae.saes.config import LinearEncoderConfig, SAEConfig, registered_families
from probe_sae.saes.dictionary import Dictionary
from probe_sae.saes.jumprelu import JumpReLUSAE
from probe_sae.saes.matryoshka import MatryoshkaSAE
from probe_sae.saes.mp import MPSAE
from probe_sae.saes.relu import ReLUSAE
from probe_sae.saes.topk import TopKSAE

#: the SAE class of each family
FAMILIES: dict[str, type[SAE]] = {
    cls.family: cls
    for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MPSAE, MatryoshkaSAE)
}
#: archetypal SAEs by name: the δ they are defined with (A-SAE: 0)
ARCHETYPAL = {
    "asae": 0.0,
    "rasae": ArchetypalConfig.delta,
    "matryoshka_asae": 0.0,
    "matryoshka_rasae": ArchetypalConfig.delta,
}
#: the encoder family of ``asae`` / ``rasae`` unless ``encoder=`` is given (the paper's)
DEFAULT_ARCHETYPAL_ENCODER = "topk"
#: archetypal names whose encoder family is fixed by the name
FIXED_ARCHETYPAL_ENCODER = {"matryoshka_asae": "matryoshka", "matryoshka_rasae": "matryoshka"}


def available_families() -> list[str]:
    """Names accepted by :func:`family_config` and :func:`build_sae`."""
    return [*FAMILIES, *ARCHETYPAL]


def archetypal_encoders() -> list[str]:
    """Families that can decode through an archetypal dictionary."""
    return [
        name
        for name, cls in registered_families().items()
        if issubclass(cls, LinearEncoderConfig)
    ]


def family_config(family: str, **fields: Any) -> SAEConfig:
    """The config of ``family`` with ``fields`` set (``family_config("topk", k=16)``).

    ``"asae"`` / ``"rasae"`` give the ``encoder`` family's config (default ``"topk"``) with an
    archetypal dictionary, ``"matryoshka_asae"`` / ``"matryoshka_rasae"`` the Matryoshka
    config with one; ``delta``, ``n_candidates`` and ``init`` go to that dictionary.
    """
    name = family.lower()
    if name in ARCHETYPAL:
        if name in FIXED_ARCHETYPAL_ENCODER and "encoder" in fields:
            raise ConfigError(
                f"{name} has the {FIXED_ARCHETYPAL_ENCODER[name]} encoder; for another one use "
                f"{name.rsplit('_', 1)[1]!r} with encoder="
            )
        default_encoder = FIXED_ARCHETYPAL_ENCODER.get(name, DEFAULT_ARCHETYPAL_ENCODER)
        encoder = fields.pop("encoder", default_encoder)
        if encoder not in archetypal_encoders():
            raise ConfigError(f"encoder must be one of {archetypal_encoders()}, got {encoder!r}")
        delta = fields.pop("delta", ARCHETYPAL[name])
        other = name.replace("rasae", "asae") if "rasae" in name else name.replace("asae", "rasae")
        if ARCHETYPAL[name] == 0 and delta not in (0, 0.0):
            raise ConfigError(f"{name} has delta = 0 by definition; use {other!r} for delta > 0")
        if ARCHETYPAL[name] > 0 and delta <= 0:
            raise ConfigError(f"{name} needs delta > 0; use {other!r} for delta = 0")
        dictionary = {
            f.name: fields.pop(f.name) for f in config_fields(ArchetypalConfig) if f.name in fields
        }
        archetypal = ArchetypalConfig(**{**dictionary, "delta": delta})
        return _with_fields(family_config(encoder, **fields), archetypal=archetypal)
    if name not in FAMILIES:
        raise ConfigError(f"unknown SAE family {family!r}; choose one of {available_families()}")
    return _with_fields(FAMILIES[name].config_class(), **fields)


def _with_fields(config: SAEConfig, **fields: Any) -> SAEConfig:
    known = {f.name for f in config_fields(type(config))}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(
            f"{config.family} SAEs have no {', '.join(unknown)}; their fields are {sorted(known)}"
        )
    return dataclasses.replace(config, **fields)


def sae_class(config: SAEConfig) -> type[SAE]:
    """The SAE class a config builds."""
    if config.family not in FAMILIES:
        raise ConfigError(f"no SAE class for family {config.family!r}; known: {list(FAMILIES)}")
    return FAMILIES[config.family]


def build_sae(
    family: str | SAEConfig,
    d_model: int,
    n_concepts: int | None = None,
    *,
    candidates: Tensor | None = None,
    **fields: Any,
) -> SAE:
    """Build an SAE from its config, or by family name and fields.

    Args:
        family: a config (``TopKConfig(k=16)``) or a name from :func:`available_families`.
        d_model: width of the layer's tokens.
        n_concepts: dictionary size (default ``expansion × d_model``).
        candidates: (n_candidates, d) archetypal candidate points, required when the config
            has an archetypal dictionary (``asae`` / ``rasae``), e.g. ``kmeans(acts, 8192)``.
        fields: further config fields (``k``, ``l1_coeff``, ``delta``, ``seed``, ...).

    Example: ``build_sae("rasae", 768, 6144, candidates=kmeans(acts, 8192), k=32)``.
    """
    if n_concepts is not None:
        fields["n_concepts"] = n_concepts
    if isinstance(family, SAEConfig):
        config = _with_fields(family, **fields) if fields else family
    else:
        config = family_config(family, **fields)
    config = config.resolve(d_model)
    archetypal = config.archetypal_dictionary
    dictionary: Dictionary | None = None
    if archetypal is not None:
        if candidates is None:
            raise ValueError(
                f"{config.family} over an archetypal dictionary needs candidates=: its atoms are "
                "convex combinations of candidate points, e.g. "
                "candidates=probe_sae.kmeans(acts, n_clusters=...)"
            )
        if archetypal.n_candidates not in (None, candidates.shape[0]):
            raise ValueError(
                f"the config asks for {archetypal.n_candidates} candidates, got "
                f"{candidates.shape[0]}"
            )
        dictionary = ArchetypalDictionary(
            candidates,
            int(config.n_concepts),
            archetypal.delta,
            init=archetypal.init,
            generator=torch.Generator().manual_seed(config.seed),
        )
    elif candidates is not None:
        raise ValueError(
            f"candidates= is for archetypal dictionaries; {config.family} has a free one "
            "(use 'asae' / 'rasae', or set archetypal=ArchetypalConfig(...))"
        )
    return sae_class(config)(d_model, config, dictionary)


def sae_from_config(config: SAEConfig | Mapping[str, Any], d_model: int) -> SAE:
    """An SAE with the architecture a (saved) config describes; weights not loaded.

    An archetypal dictionary gets zero candidates, which the saved weights replace.
    """
    if not isinstance(config, SAEConfig):
        config = from_dict(SAEConfig, config)
    archetypal = config.archetypal_dictionary
    if archetypal is None:
        return sae_class(config)(d_model, config)
    if archetypal.n_candidates is None or config.n_concepts is None:
        raise ConfigError("a saved archetypal SAE must record n_concepts and n_candidates")
    placeholder = torch.zeros(archetypal.n_candidates, d_model)
    dictionary = ArchetypalDictionary(placeholder, config.n_concepts, archetypal.delta)
    return sae_class(config)(d_model, config, dictionary)
